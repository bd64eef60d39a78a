"""Prefect tasks around `models/`: prepare data, train, evaluate, calibrate, register."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset, DatasetDict, Value
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from slm_flywheel import progress
from slm_flywheel.config import Settings, WorkloadConfig
from slm_flywheel.tracking import experiment_id, log_metrics
from slm_flywheel.models.calibration import Calibration, calibrate, plot_reliability, plot_risk_coverage
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.data import SplitSummary, content_hash, sample_training_set, summarize_splits
from slm_flywheel.models.scenarios import launch_plan, launch_training_set
from slm_flywheel.models.evaluation import EvalResult, evaluate_model, plot_breakdown
from slm_flywheel.models.training import TrainResult
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.tasks.locks import workload_lock


TRAINING_SET_ARTIFACT = "evaluation/training_set.parquet"  # the exact rows a version was trained on


@dataclass(frozen=True)
class TrainingData:
    """A workload's spec, its splits, the sampled training set and what identifies the data."""

    spec: TaskSpec
    splits: DatasetDict
    train_set: Dataset
    summary: SplitSummary
    launch: bool = False

    @property
    def data_hash(self) -> str:
        """Identifies the splits *and* the exact training set (replay + new labels in a retrain)."""
        return hashlib.sha256((self.summary.data_hash + content_hash(self.train_set)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RegisteredAdapter:
    """The outcome of `train-adapter`: the registered version and its golden scores."""

    workload: str
    version: int
    alias: str
    run_id: str
    data_hash: str
    golden: dict[str, float]
    train_seconds: float
    tokens_per_second: float


@task(cache_policy=NONE)  # reads the live review queue and training sets
def prepare_training_data(context: WorkloadContext, launch: bool = False, training_set_path: str | None = None) -> TrainingData:
    """Load the workload's dataset, split it deterministically and sample the training set.

    With `launch`, the training set is the launch data (late items capped; see models/scenarios.py).
    With `training_set_path` (Parquet: id, text, label), that file is the training set, as the
    nightly retrain builds it (the champion's data replayed plus the new teacher labels).
    """
    workload, config, spec, splits = context.name, context.config, context.spec, context.splits
    if training_set_path is not None:
        train_set = Dataset.from_pandas(pd.read_parquet(training_set_path)[["id", "text", "label"]], preserve_index=False)
    elif launch:
        plan = launch_plan(spec.task, spec.labels, config.launch)
        train_set = launch_training_set(splits["train"], plan, config.training.max_examples, config.training.seed)
    else:
        train_set = sample_training_set(
            splits["train"], config.training.max_examples, config.training.seed, stratify=spec.task == "classification"
        )
    summary = summarize_splits(splits)
    if "id" in train_set.column_names:
        train_set = train_set.cast_column("id", Value("string"))  # dataset rows and request ids side by side
    data = TrainingData(spec=spec, splits=splits, train_set=train_set, summary=summary, launch=launch)
    get_run_logger().info("%s: splits %s, training on %d examples, data hash %s", workload, summary.sizes, len(train_set), data.data_hash)
    return data


@task(cache_policy=NONE)  # materializes the base model once on disk (models/base_model.py); the path is cheap to recompute
def pull_base_model(settings: Settings) -> str:
    """Materialize (once) and resolve the configured base model to a loadable path."""
    from slm_flywheel.models.base_model import resolve_base_model

    return resolve_base_model(settings.base_model, settings.models_dir)


@task(cache_policy=NONE)  # writes a new adapter: a retrain is asked for, never a stored one
def train_adapter(data: TrainingData, base_path: str, config: WorkloadConfig, output_dir: Path, warm_start_adapter: str | None = None) -> TrainResult:
    """LoRA SFT on the sampled training set; the adapter is saved to `output_dir`."""
    from slm_flywheel.models.training import train_lora

    result = train_lora(
        data.spec,
        base_path,
        data.train_set,
        output_dir,
        config.training,
        progress=lambda done, total: progress.report(f"train {data.spec.name}", done, total),
        warm_start_adapter=warm_start_adapter,
    )
    get_run_logger().info(
        "trained %s on %d examples in %.0f s (%.0f tokens/s, bf16=%s, final loss %.3f)",
        data.spec.name, result.examples, result.seconds, result.tokens_per_second, result.bf16, result.final_loss,
    )
    return result


@task(cache_policy=NONE)  # evaluations are cached per (adapter, items) by models/evaluation.py: measured reason beside evaluate_candidate
def evaluate_adapter(
    spec: TaskSpec,
    base_path: str,
    adapter_dir: Path | None,
    examples: Dataset,
    batch_size: int,
    cache_dir: Path | None = None,
    split: str = "golden",
) -> EvalResult:
    """Predict `examples` (the `split` they come from) with base + adapter (None: the base model alone) and score them.

    With `cache_dir` the result is stored for reuse (`models.evaluation.evaluate_sets`): the gate
    re-reads a version's golden result, a rerun of `train-adapter` its validation result too."""
    result = evaluate_model(
        spec, base_path, adapter_dir, list(examples["text"]), list(examples["label"]), batch_size,
        progress=lambda done, total: progress.report(f"evaluate {spec.name} ({split})", done, total),
        cache_dir=cache_dir,
    )
    get_run_logger().info("%s %s: %s", spec.name, split, {k: round(v, 4) for k, v in result.metrics.items()})
    return result


@task(cache_policy=NONE)  # a pure fit on the validation result, milliseconds; the evaluation it reads is cached
def calibrate_confidence(context: WorkloadContext, validation: EvalResult) -> Calibration:
    """Fit the adapter's confidence calibrator and routing threshold on its validation answers."""
    router = context.config.router
    answers = validation.predictions if context.config.task == "classification" else None  # per-intent offsets (models/calibration.py)
    calibration = calibrate(
        validation.confidences, validation.correct, router.target_accuracy, router.calibration, answers,
        bound_confidence=router.threshold_confidence,
    )
    get_run_logger().info(
        "%s calibration on %d validation items: ECE %.3f -> %.3f (%s); the small model keeps %.0f%% at threshold %s "
        "for target accuracy %.2f at %.0f%% confidence",
        context.name, calibration.examples, calibration.ece_before, calibration.ece_after, router.calibration,
        100 * calibration.coverage, "none" if calibration.threshold is None else f"{calibration.threshold:.3f}", router.target_accuracy,
        100 * router.threshold_confidence,
    )
    return calibration


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def set_initial_alias(client: Any, workload: str, version: int) -> str:
    """`champion` for the workload's first version (and the history's bootstrap entry), else `challenger`.

    Read and set under the workload's `promote` lock: two trainings finishing at once on a workload
    without a champion would otherwise both read "no champion" and both take the alias, and the
    history would start twice."""
    from slm_flywheel.models.promotion import record_bootstrap
    from slm_flywheel.models.registry import CHAMPION, assign_initial_alias

    with workload_lock("promote", workload):
        alias = assign_initial_alias(client, workload, version)
        if alias == CHAMPION:
            record_bootstrap(client, workload, version, actor="train-adapter")
    return alias


@task(cache_policy=NONE)  # side effect on the registry
def register_adapter_version(
    context: WorkloadContext,
    client: Any,
    data: TrainingData,
    base_path: str,
    trained: TrainResult,
    golden: EvalResult,
    calibration: Calibration | None = None,
) -> RegisteredAdapter:
    """Log params, metrics and artifacts to an MLflow run, register the adapter, set its alias.

    With `calibration`, its calibrator and threshold are stored in the adapter's folder
    (`calibration.json`), so they are registered with it, and its plots go to `evaluation/`."""
    from slm_flywheel.models.registry import register_adapter

    settings, workload, config = context.settings, context.name, context.config
    run = client.create_run(experiment_id(client, settings, workload), run_name=f"train-{workload}")
    run_id = run.info.run_id
    try:
        params = {
            "workload": workload,
            "base_model": settings.base_model,
            "data_hash": data.data_hash,
            "git_commit": _git_commit(),
            "train_examples": trained.examples,
            "launch_data": data.launch,
            "bf16": trained.bf16,
            "step_batch_size": trained.batch_size,  # train_batch_size, or smaller for train_min_steps
            **{f"split_{k}": v for k, v in data.summary.sizes.items()},
            **{f"train_{k}": v for k, v in config.training.model_dump().items()},
        }
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        metrics = {
            "train_seconds": trained.seconds,
            "train_tokens_per_second": trained.tokens_per_second,
            "train_loss": trained.final_loss,
            **{f"golden_{k}": v for k, v in golden.metrics.items()},
            **(calibration.metrics(golden.confidences, golden.correct, golden.predictions) if calibration is not None else {}),
        }
        log_metrics(client, run_id, metrics)
        if calibration is not None:
            calibration.save(trained.adapter_dir)
        client.log_artifacts(run_id, str(trained.adapter_dir), "adapter")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            plot_breakdown(data.spec, golden, folder / "golden_breakdown.png")
            if calibration is not None:
                plot_reliability(calibration, folder / "reliability.png")
                plot_risk_coverage(calibration, folder / "risk_coverage.png")
            (folder / "golden_eval_table.json").write_text(json.dumps(golden.table(), indent=1))
            data.train_set.to_pandas()[["id", "text", "label"]].to_parquet(folder / TRAINING_SET_ARTIFACT.split("/")[-1])
            (folder / "config.json").write_text(
                json.dumps({"workload": config.model_dump(), "spec": data.spec.to_dict(), "splits": asdict(data.summary)}, indent=1)
            )
            client.log_artifacts(run_id, str(folder), "evaluation")
        tags = {
            "workload": workload,
            "data_hash": data.data_hash,
            "base_model": settings.base_model,
            "training_data": "launch" if data.launch else "standard",
            **{f"golden_{k}": f"{v:.4f}" for k, v in golden.metrics.items()},
        }
        version = register_adapter(client, workload, run_id, tags, description=f"trained on {trained.examples} examples")
        alias = set_initial_alias(client, workload, version.version)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    get_run_logger().info("registered %s version %d as @%s", workload, version.version, alias)
    return RegisteredAdapter(
        workload=workload,
        version=version.version,
        alias=alias,
        run_id=run_id,
        data_hash=data.data_hash,
        golden=golden.metrics,
        train_seconds=trained.seconds,
        tokens_per_second=trained.tokens_per_second,
    )
