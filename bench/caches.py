"""Cache benchmark: how many expensive calls (teacher answers, embedding passes, model evaluations)
Prefect 3's own `cache_policy=INPUTS` saves against the project's hand-written caches, counted,
never timed.

    .venv/bin/python -m bench.caches [--quick]

Three arms run each scenario: no cache; real Prefect tasks (`cache_policy=INPUTS`,
`persist_result=True`, results in a temp dir, an ephemeral API under `prefect_test_harness` as
tests/flows runs it) whose signatures have the shape of the project's tasks and whose bodies pay
without any other cache; and the project's own caches through its real functions
(`label_with_cache`, `Embedder.encode_cached`, `evaluate_sets` with `gate_eval_sets`). The expensive
part is a counting fake in every arm: a teacher that answers (one paid call per answered item),
an `Embedder` whose `encode` counts passes, and an evaluator (model loading, prediction and
scoring patched out of `evaluate_sets`) that counts one evaluation per (model, set). The client
passed to the reference task is a real `MlflowClient` on a temporary SQLite registry, one per flow
run as the flows build it.

Scenarios (texts from Banking77; `--quick` shrinks the counts, not the shapes):
  T1  identical rerun of the nightly relabel (same inputs, same run tag)
  T1b the nightly flow rerun: same selection, a new run tag (nightly_retrain stamps it per run)
  T2  the frontier drops after half the items (transport failures, as the OpenAI-compatible
      teacher reports them); the relabel is rerun with the same inputs
  T2r the same outage, but the teacher raises mid-call instead
  T3  the rollback guard audits the day's live samples, then the nightly relabel selects from
      the same day's traffic, overlapping the audit
  E1  three nights, drift-check and nightly both build the champion's reference over its
      unchanged training set; the champion changes on night 3 (E1l: the client holds a lock)
  V1  three nights of train-adapter (golden eval of the new version) and the gate (candidate,
      champion, base on golden and on the night's drift slice, in one task call); night 2's
      candidate is promoted

Each Prefect arm keeps its results in its own folder (INPUTS keys only the inputs, so two tasks
with equal inputs would share a key). A Prefect arm that returned a wrong result (a stale reference)
is counted, in the savings line, at the calls it needs to stay correct: the no-cache count (an
input key cannot see the registry, so the task must not cache). The last line is the headline
`teacher_calls_saved_vs_prefect=<n> embedding_passes_saved_vs_prefect=<n> evaluations_saved_vs_prefect=<n>`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from slm_flywheel.models.drift import Embedder
from slm_flywheel.models.drift.records import EMBEDDING_DIM
from slm_flywheel.models.teacher import TeacherItem, TeacherLabel, TeacherRun
from slm_flywheel.models.teacher.records import OK

if TYPE_CHECKING:
    from slm_flywheel.config import Settings
    from slm_flywheel.models.workload import TaskSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Sizes:
    relabel: int  # items the nightly relabel selects (T1, T2, T3)
    audit: int  # live samples the rollback guard audits (T3)
    overlap: int  # audited samples the nightly selection picks again (T3)
    reference: int  # texts in the champion's training set (E1)
    golden: int  # golden items (V1)
    drift_slice: int  # teacher-labelled items never trained on, per night (V1); >= LATENCY_PROBE_MIN


FULL = Sizes(relabel=200, audit=40, overlap=25, reference=1000, golden=1000, drift_slice=40)
QUICK = Sizes(relabel=40, audit=10, overlap=6, reference=200, golden=100, drift_slice=32)
NIGHTS = 3


@dataclass
class Row:
    """One scenario's counts; `kind` says which headline it adds to."""

    scenario: str
    recurs: str
    kind: str  # teacher | embedding | evaluation
    none: int
    prefect: int
    project: int
    note: str
    prefect_correct: bool = True  # False: Prefect served a stale result; savings count it at `none`
    key_computed: bool = True  # whether Prefect could hash the task's inputs at all
    in_headline: bool = True

    @property
    def saved_vs_prefect(self) -> int:
        return (self.prefect if self.prefect_correct else self.none) - self.project


class FrontierDown(RuntimeError):
    """The fake frontier's outage, when it raises instead of reporting failures."""


class CountingTeacher:
    """A `Teacher` that answers from the label set by a hash of the text; `paid` counts answers.

    `outage_after`: answered items after which every item fails (a transport failure label, or
    `FrontierDown` where `raises`), until `outage_after` is set back to None.
    """

    def __init__(self, labels: list[str], name: str = "fake-frontier") -> None:
        self.name = name
        self.labels = labels
        self.paid = 0
        self.outage_after: int | None = None
        self.raises = False

    def label(self, items: list[TeacherItem]) -> TeacherRun:
        answers = []
        for item in items:
            if self.outage_after is not None and self.paid >= self.outage_after:
                if self.raises:
                    raise FrontierDown(f"connection reset after {self.paid} answers")
                answers.append(TeacherLabel(item.item_id, None, False, "failed: connection reset", 0.0, False, self.name))
                continue
            self.paid += 1
            label = self.labels[int(hashlib.sha256(item.text.encode()).hexdigest()[:8], 16) % len(self.labels)]
            answers.append(TeacherLabel(item.item_id, label, True, OK, 0.001, False, self.name))
        return TeacherRun(answers, len(items), 0, 0.001 * sum(a.valid for a in answers), 10.0, 0, 0)


class CountingEmbedder(Embedder):
    """An `Embedder` that never loads MiniLM: `encode` counts passes and returns seeded unit vectors."""

    def __init__(self) -> None:
        super().__init__(model_path=Path("/bench/fake-minilm"), bf16=False)
        self.passes = 0

    def encode(self, texts: list[str]) -> np.ndarray:  # type: ignore[override]
        self.passes += 1
        seed = int(hashlib.sha256("\0".join(texts).encode()).hexdigest()[:8], 16)
        vectors = np.random.default_rng(seed).standard_normal((len(texts), EMBEDDING_DIM)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class LockedClient:
    """An MLflow client that also holds a lock (a live connection): nothing Prefect can hash."""

    def __init__(self, tracking_uri: str) -> None:
        import mlflow

        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self._lock = threading.Lock()

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        with self._lock:
            return self._client.get_model_version_by_alias(name, alias)


@dataclass
class Bench:
    """What every scenario shares: the workload, its texts, a temp folder and the fakes' factories."""

    settings: Settings
    spec: TaskSpec
    traffic: list[str]  # the day's live requests, distinct
    golden: Any  # datasets.Dataset: text, label
    validation: pd.DataFrame  # text, label: where the nightly drift slices come from
    tmp: Path
    sizes: Sizes
    evaluations: int = 0  # model evaluations counted by `_counting_evaluator`

    def folder(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def teacher(self) -> CountingTeacher:
        return CountingTeacher(list(self.spec.labels))


def _items(frame: pd.DataFrame) -> list[TeacherItem]:
    # How relabel_with_teacher and measure_live_signals turn their rows into teacher items.
    return [TeacherItem(str(rid), str(text)) for rid, text in zip(frame["request_id"], frame["input"])]


def _rows(texts: list[str], start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"request_id": [f"r{start + i}" for i in range(len(texts))], "input": texts})


@contextmanager
def _prefect_storage(path: Path) -> Iterator[None]:
    """Results of the Prefect tasks called inside go to `path` (one folder per arm)."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    updates = {PREFECT_LOCAL_STORAGE_PATH: str(path), PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}
    with temporary_settings(updates=updates):
        yield


def _cached_task(fn: Callable) -> Any:
    from prefect import task
    from prefect.cache_policies import INPUTS

    return task(cache_policy=INPUTS, persist_result=True)(fn)


def _key_computes(inputs: dict[str, Any]) -> bool:
    """Whether Prefect's INPUTS policy can hash these task inputs (what the task engine tries first)."""
    from prefect.cache_policies import INPUTS

    try:
        INPUTS.compute_key(task_ctx=None, inputs=inputs, flow_parameters={})  # type: ignore[arg-type]
        return True
    except ValueError:
        return False


def _prefect_relabel(teacher: CountingTeacher, raise_on_failures: bool) -> Any:
    """`relabel_with_teacher`'s shape under INPUTS: the body pays the teacher for every item."""

    def relabel_with_teacher(settings: Settings, spec: TaskSpec, selected: pd.DataFrame, run_tag: str) -> list[TeacherLabel]:
        run = teacher.label(_items(selected))
        failed = sum(label.failed for label in run.labels)
        if raise_on_failures and failed:
            # A failed task stores nothing: the only way to keep Prefect from caching the failures.
            raise FrontierDown(f"{failed} items got no answer")
        return run.labels

    return _cached_task(relabel_with_teacher)


def _prefect_audit(teacher: CountingTeacher) -> Any:
    """`measure_live_signals`' shape under INPUTS: the audit pays the teacher for every sample."""

    def measure_live_signals(settings: Settings, spec: TaskSpec, version: int, samples: pd.DataFrame, audit_budget: int, seed: int = 0) -> float:
        run = teacher.label(_items(samples.head(audit_budget)))
        return sum(label.valid for label in run.labels) / max(len(run.labels), 1)

    return _cached_task(measure_live_signals)


def _unlabelled(labels: list[TeacherLabel]) -> int:
    return sum(not label.valid for label in labels)


def t1_rerun(bench: Bench, new_run_tag: bool) -> Row:
    """The nightly relabel run twice over the same selection (T1: same run tag; T1b: a new one)."""
    from slm_flywheel.tasks.relabel import label_with_cache

    name = "T1b" if new_run_tag else "T1"
    selected = _rows(bench.traffic[: bench.sizes.relabel])
    tags = ("20261128T020000", "20261128T031500" if new_run_tag else "20261128T020000")
    none = bench.teacher()
    for _ in tags:
        none.label(_items(selected))
    prefect = bench.teacher()
    relabel = _prefect_relabel(prefect, raise_on_failures=False)
    with _prefect_storage(bench.folder(f"prefect-{name}")):
        for tag in tags:
            relabel(bench.settings, bench.spec, selected, tag)
    project = bench.teacher()
    for _ in tags:
        label_with_cache(project, _items(selected), bench.folder(f"labels-{name}"))
    if new_run_tag:
        recurs, note = (
            f"{bench.sizes.relabel} selected texts, new run tag",
            "the run tag is an input, so a rerun of the flow is a new key; the per-text key ignores it",
        )
    else:
        recurs, note = f"{bench.sizes.relabel} selected texts, same run tag", "both free on an identical rerun"
    return Row(name, recurs, "teacher", none.paid, prefect.paid, project.paid, note, key_computed=_key_computes(
        {"settings": bench.settings, "spec": bench.spec, "selected": selected, "run_tag": tags[0]}))


def t2_outage(bench: Bench, raises: bool) -> Row:
    """The frontier drops after half the items; the relabel is rerun with the same inputs."""
    from slm_flywheel.tasks.relabel import label_with_cache

    name = "T2r" if raises else "T2"
    n = bench.sizes.relabel
    offset = 2 * n if raises else n  # texts unseen by the other scenarios
    selected = _rows(bench.traffic[offset : offset + n], offset)
    tag = "20261128T020000"

    def with_outage(teacher: CountingTeacher, attempt: Callable[[], list[TeacherLabel] | None]) -> list[TeacherLabel] | None:
        teacher.outage_after, teacher.raises = teacher.paid + n // 2, raises
        try:
            first = attempt()
        except FrontierDown:
            first = None
        teacher.outage_after = None  # the frontier is back for the rerun
        return first

    none = bench.teacher()
    with_outage(none, lambda: none.label(_items(selected)).labels)
    none.label(_items(selected))

    # Prefect, the task raising on failures so nothing failed is cached; then returning them.
    prefect = bench.teacher()
    relabel = _prefect_relabel(prefect, raise_on_failures=True)
    with _prefect_storage(bench.folder(f"prefect-{name}")), _quiet_task_errors():
        with_outage(prefect, lambda: relabel(bench.settings, bench.spec, selected, tag))
        final = relabel(bench.settings, bench.spec, selected, tag)
    lenient = bench.teacher()
    relabel = _prefect_relabel(lenient, raise_on_failures=False)
    with _prefect_storage(bench.folder(f"prefect-{name}-lenient")), _quiet_task_errors():
        with_outage(lenient, lambda: relabel(bench.settings, bench.spec, selected, tag))
        kept = relabel(bench.settings, bench.spec, selected, tag)

    project = bench.teacher()
    cache = bench.folder(f"labels-{name}")
    with_outage(project, lambda: label_with_cache(project, _items(selected), cache)[0].labels)
    run, _ = label_with_cache(project, _items(selected), cache)
    assert _unlabelled(final) == 0 and _unlabelled(run.labels) == 0, "both reruns must end with every item labelled"
    if raises:
        note = "label_with_cache stores only what Teacher.label returned: a teacher that raises loses the paid half in every arm"
    else:
        note = (
            f"the per-item cache keeps the {n // 2} paid answers; a task returning the failures instead is a Prefect "
            f"cache hit on rerun ({lenient.paid} paid) that leaves {_unlabelled(kept)} items unlabelled"
        )
    return Row(name, f"{n // 2} answers paid before the outage", "teacher", none.paid, prefect.paid, project.paid, note)


def t3_audit_then_relabel(bench: Bench) -> Row:
    """The rollback guard audits live samples; the nightly relabel then picks some of them again."""
    from slm_flywheel.tasks.relabel import label_with_cache

    sizes = bench.sizes
    start = 4 * sizes.relabel
    day = bench.traffic[start : start + sizes.audit + sizes.relabel]
    audited = _rows(day[: sizes.audit], start)
    # The nightly selection: `overlap` of the audited samples, the rest never audited.
    first = sizes.audit - sizes.overlap
    selected = _rows(day[first : first + sizes.relabel], start + first)
    none = bench.teacher()
    none.label(_items(audited))
    none.label(_items(selected))
    prefect = bench.teacher()
    audit, relabel = _prefect_audit(prefect), _prefect_relabel(prefect, raise_on_failures=False)
    with _prefect_storage(bench.folder("prefect-T3")):
        audit(bench.settings, bench.spec, 7, audited, sizes.audit)
        relabel(bench.settings, bench.spec, selected, "20261128T020000")
    project = bench.teacher()
    cache = bench.folder("labels-T3")  # one folder per workload: relabel and audit share it
    label_with_cache(project, _items(audited), cache)
    label_with_cache(project, _items(selected), cache)
    return Row(
        "T3", f"{sizes.overlap} of {sizes.audit} audited texts in the {sizes.relabel} selected", "teacher",
        none.paid, prefect.paid, project.paid, "different tasks, different inputs: no whole-input key can match",
    )


def _registry(bench: Bench, versions: int) -> str:
    """A temporary MLflow registry holding the workload's model with `versions` versions; returns its tracking URI."""
    import mlflow

    uri = f"sqlite:///{bench.folder('mlflow') / 'm.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_registered_model(bench.spec.name)
    for version in range(1, versions + 1):
        client.create_model_version(bench.spec.name, source=str(bench.folder(f"adapters/v{version}")))
    return uri


def e1_reference(bench: Bench, locked: bool, uri: str, training_sets: dict[int, list[str]]) -> Row:
    """Three nights of drift-check and nightly, both building the champion's reference."""
    import mlflow

    name = "E1l" if locked else "E1"
    admin = mlflow.MlflowClient(tracking_uri=uri)
    validation = list(bench.validation["text"])
    base_path = str(bench.folder("base"))
    champions = (1, 1, 2)  # the champion changes on night 3

    def flow_client() -> Any:  # each flow run builds its own client, as `mlflow_client(settings)` does
        return LockedClient(uri) if locked else mlflow.MlflowClient(tracking_uri=uri)

    def champion_texts(client: Any) -> tuple[int, list[str]]:
        version = int(client.get_model_version_by_alias(bench.spec.name, "champion").version)
        return version, training_sets[version]

    none, prefect, project = CountingEmbedder(), CountingEmbedder(), CountingEmbedder()

    def build_reference(settings: Settings, client: Any, spec: TaskSpec, validation_texts: list[str], base_path: str) -> tuple[int, np.ndarray]:
        version, texts = champion_texts(client)
        return version, prefect.encode(texts)

    build = _cached_task(build_reference)
    stale, key_computed = 0, True
    cache = bench.folder(f"reference-{name}")
    with _prefect_storage(bench.folder(f"prefect-{name}")), _quiet_task_errors():
        for champion in champions:
            admin.set_registered_model_alias(bench.spec.name, "champion", str(champion))
            for _flow in ("drift-check", "nightly-retrain"):
                none.encode(champion_texts(flow_client())[1])
                inputs = {"settings": bench.settings, "client": flow_client(), "spec": bench.spec, "validation_texts": validation, "base_path": base_path}
                key_computed = key_computed and _key_computes(inputs)
                version, _ = build(**inputs)
                stale += version != champion
                project.encode_cached(champion_texts(flow_client())[1], cache)
    if locked:
        note = "Prefect cannot hash a client holding a lock: it logs an error and runs uncached"
    else:
        note = (
            f"Prefect hashes the MlflowClient by its URI, not by the champion it points to: {stale} of "
            f"{2 * NIGHTS} builds returned the old champion's reference (stale)"
        )
    return Row(
        name, f"{bench.sizes.reference} unchanged training texts, 2 flows x {NIGHTS} nights", "embedding",
        none.passes, prefect.passes, project.passes, note, prefect_correct=stale == 0, key_computed=key_computed, in_headline=not locked,
    )


@contextmanager
def _quiet_task_errors() -> Iterator[None]:
    # The task engine logs a traceback for every key it cannot compute and every task the outage
    # fails: expected here, and the table records them.
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _counting_evaluator(bench: Bench) -> Iterator[None]:
    """`evaluate_sets` with model loading and prediction patched out; one count per (model, set) scored."""
    from unittest.mock import patch

    from slm_flywheel.models import evaluation, inference
    from slm_flywheel.models.evaluation import EvalResult

    class Predictor:
        def __init__(self, *args: Any) -> None:
            pass

        def predict(self, texts: list[str]) -> list[inference.Prediction]:
            return [inference.Prediction(None, 0.0, False) for _ in texts]

    def evaluate_predictions(spec: TaskSpec, predictions: list[Any], references: list[str]) -> EvalResult:
        bench.evaluations += 1
        return EvalResult({"accuracy": 0.0}, {}, [""] * len(predictions), list(references))

    with (
        patch.object(inference, "Predictor", Predictor),
        patch.object(inference, "load_model", lambda *args: None),
        patch.object(inference, "load_tokenizer", lambda *args: None),
        patch.object(evaluation, "evaluate_predictions", evaluate_predictions),
    ):
        yield


def v1_train_and_gate(bench: Bench, uri: str) -> Row:
    """Three nights: train-adapter's golden eval of the new version, then the gate's 3 models x 2 sets."""
    import mlflow
    from datasets import Dataset

    from slm_flywheel.models.evaluation import evaluate_model, evaluate_sets
    from slm_flywheel.models.gates import gate_eval_sets
    from slm_flywheel.models.registry import AdapterVersion

    spec, batch = bench.spec, 16
    base_path = bench.folder("base")
    (base_path / "config.json").write_text('{"model_type": "llama"}')
    golden = bench.golden
    golden_pair = (list(golden["text"]), list(golden["label"]))
    slices = [bench.validation.iloc[i * bench.sizes.drift_slice : (i + 1) * bench.sizes.drift_slice] for i in range(NIGHTS)]

    def adapter(version: int) -> Path:
        folder = bench.folder(f"adapters/v{version}")
        (folder / "adapter_config.json").write_text('{"r": 16}')
        (folder / "adapter_model.safetensors").write_bytes(f"weights of v{version}".encode())
        return folder

    def record(version: int) -> AdapterVersion:
        return AdapterVersion(spec.name, version, f"run-{version}", str(adapter(version)), (), {})

    def gate(champion: AdapterVersion, candidate: AdapterVersion, holdout: pd.DataFrame, cache_dir: Path | None) -> None:
        sets = gate_eval_sets(golden_pair, (list(holdout["text"]), list(holdout["label"])))
        for adapter_dir in (None, Path(champion.source), Path(candidate.source)):
            evaluate_sets(spec, str(base_path), adapter_dir, sets, batch, None, cache_dir)

    def evaluate_adapter(spec: TaskSpec, base_path: str, adapter_dir: Path | None, examples: Dataset, batch_size: int, cache_dir: Path | None = None) -> Any:
        return evaluate_model(spec, base_path, adapter_dir, list(examples["text"]), list(examples["label"]), batch_size, cache_dir=cache_dir)

    def evaluate_candidate(
        settings: Settings, client: Any, spec: TaskSpec, base_path: str, champion: AdapterVersion, candidate: AdapterVersion, golden: Dataset, holdout: pd.DataFrame,
    ) -> None:
        gate(champion, candidate, holdout, None)

    def nights(train: Callable[[AdapterVersion], None], decide: Callable[[AdapterVersion, AdapterVersion, pd.DataFrame], None]) -> int:
        bench.evaluations = 0
        champion = record(1)
        for night in range(NIGHTS):
            candidate = record(2 + night)
            train(candidate)
            decide(champion, candidate, slices[night])
            if night == 1:  # night 2's candidate is promoted
                champion = candidate
        return bench.evaluations

    with _counting_evaluator(bench):
        none = nights(
            lambda candidate: evaluate_model(spec, str(base_path), Path(candidate.source), *golden_pair, batch),
            lambda champion, candidate, holdout: gate(champion, candidate, holdout, None),
        )
        cached_adapter, cached_candidate = _cached_task(evaluate_adapter), _cached_task(evaluate_candidate)
        keys: list[bool] = []

        def prefect_gate(champion: AdapterVersion, candidate: AdapterVersion, holdout: pd.DataFrame) -> None:
            inputs = {
                "settings": bench.settings, "client": mlflow.MlflowClient(tracking_uri=uri), "spec": spec, "base_path": str(base_path),
                "champion": champion, "candidate": candidate, "golden": golden, "holdout": holdout,
            }
            keys.append(_key_computes(inputs))
            cached_candidate(**inputs)

        with _prefect_storage(bench.folder("prefect-V1")):
            prefect = nights(lambda candidate: cached_adapter(spec, str(base_path), Path(candidate.source), golden, batch), prefect_gate)
        cache = bench.folder("eval-cache")
        project = nights(
            lambda candidate: evaluate_model(spec, str(base_path), Path(candidate.source), *golden_pair, batch, cache_dir=cache),
            lambda champion, candidate, holdout: gate(champion, candidate, holdout, cache),
        )
    return Row(
        "V1", "base and champion golden every night; candidate golden from training", "evaluation", none, prefect, project,
        "the gate's key holds the new candidate, so it never repeats; the per-(model, set) key reuses golden results "
        "(drift slices are measured now by design)", key_computed=all(keys),
    )


def measure(quick: bool) -> list[Row]:
    """Run every scenario in all three arms under an ephemeral Prefect API; returns the rows in order."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from slm_flywheel.models.context import load_workload

    sizes = QUICK if quick else FULL
    context = load_workload("banking-intent")
    splits = context.splits
    traffic = list(dict.fromkeys(splits["train"]["text"]))
    needed = 4 * sizes.relabel + sizes.audit + sizes.relabel
    if len(traffic) < needed:
        raise ValueError(f"{len(traffic)} distinct train texts, the scenarios need {needed}")
    validation = splits["validation"].to_pandas()[["text", "label"]]
    with tempfile.TemporaryDirectory(prefix="bench-caches-") as tmp:
        bench = Bench(
            context.settings, context.spec, traffic, splits["golden"].select(range(min(sizes.golden, len(splits["golden"])))),
            validation, Path(tmp), sizes,
        )
        # The champions' training sets: night 3's champion replays 90% of the old set plus new labels.
        old, new_labels = traffic[-sizes.reference :], traffic[-2 * sizes.reference :][: sizes.reference // 10]
        training_sets = {1: old, 2: old[sizes.reference // 10 :] + new_labels}
        with temporary_settings(updates={PREFECT_HOME: str(bench.folder("prefect-home"))}), prefect_test_harness(server_startup_timeout=120):
            uri = _registry(bench, len(training_sets))
            return [
                t1_rerun(bench, new_run_tag=False),
                t1_rerun(bench, new_run_tag=True),
                t2_outage(bench, raises=False),
                t2_outage(bench, raises=True),
                t3_audit_then_relabel(bench),
                e1_reference(bench, locked=False, uri=uri, training_sets=training_sets),
                e1_reference(bench, locked=True, uri=uri, training_sets=training_sets),
                v1_train_and_gate(bench, uri),
            ]


def headline(rows: list[Row]) -> dict[str, int]:
    """Calls the project's caches save against Prefect's INPUTS policy, per kind (headline rows only)."""
    saved = {"teacher": 0, "embedding": 0, "evaluation": 0}
    for row in rows:
        if row.in_headline:
            saved[row.kind] += row.saved_vs_prefect
    return saved


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | what recurs | calls, no cache | calls, Prefect INPUTS | calls, project cache | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        prefect = f"{row.prefect:,}" + ("" if row.prefect_correct else " (stale)") + ("" if row.key_computed else " (no key)")
        lines.append(f"| {row.scenario} | {row.recurs} | {row.none:,} | {prefect} | {row.project:,} | {row.note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (40 selected items, 200 reference texts, 100 golden items)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    rows = measure(args.quick)
    saved = headline(rows)
    print(table(rows))
    print(
        f"teacher_calls_saved_vs_prefect={saved['teacher']} embedding_passes_saved_vs_prefect={saved['embedding']} "
        f"evaluations_saved_vs_prefect={saved['evaluation']}"
    )


if __name__ == "__main__":
    main()
