"""The `train-adapter` flow: a workload's labelled data becomes a registered, evaluated LoRA adapter."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.context import load_workload
from slm_flywheel.tasks.training import (
    RegisteredAdapter,
    calibrate_confidence,
    evaluate_adapter,
    prepare_training_data,
    pull_base_model,
    register_adapter_version,
    train_adapter,
)


@flow(name="train-adapter")
def train_adapter_flow(
    workload: str,
    config_path: str | None = None,
    max_examples: int | None = None,
    launch: bool = False,
    profile: str = "default",
    training_set_path: str | None = None,
    warm_start_adapter: str | None = None,
) -> RegisteredAdapter:
    """Train, evaluate on golden, calibrate on validation and register a LoRA adapter for `workload`.

    `profile`: a named set of training settings from the workload's `training_profiles`
    (e.g. "full": every non-golden row, more epochs); "default" is its `training` block.

    1. prepare data: load the dataset, deterministic splits, sample the training set
       (`launch=True`: the launch data, which under-represents what later traffic favours;
       `training_set_path`: a training set built by the caller, e.g. the nightly retrain)
    2. pull the base model (materialized once)
    3. train a LoRA adapter (peft + trl), fresh or warm-started from `warm_start_adapter`
    4. evaluate it on the golden split (never trained on) and on the validation split
    5. calibrate its confidence on the validation split and pick the routing threshold for
       `router.target_accuracy` (stored beside the adapter, so they travel with the version)
    6. log everything to MLflow (the exact training set included) and register the version:
       `champion` if there is none, else `challenger`
    """
    context = load_workload(workload, config_path).with_training_profile(profile)
    if max_examples is not None:
        context = context.with_max_examples(max_examples)
    settings, config = context.settings, context.config
    # Data
    data = prepare_training_data(context, launch, training_set_path)
    base_path = pull_base_model(settings)
    # Train
    output_dir = Path(settings.home).resolve() / "runs" / workload / data.data_hash
    trained = train_adapter(data, base_path, config, output_dir, warm_start_adapter)
    # Evaluate: golden (never trained on) and validation (the calibration set), each cached
    golden = evaluate_adapter(data.spec, base_path, trained.adapter_dir, data.splits["golden"], config.eval_batch_size, settings.eval_cache_dir)
    validation = evaluate_adapter(
        data.spec, base_path, trained.adapter_dir, data.splits["validation"], config.eval_batch_size, settings.eval_cache_dir, split="validation"
    )
    # Calibrate
    calibration = calibrate_confidence(context, validation)
    # Register
    return register_adapter_version(context, mlflow_client(settings), data, base_path, trained, golden, calibration)
