"""The `drift-check` flow: the nightly run's drift stage alone (hourly; it moves no watermark)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from slm_flywheel.config import load_settings
from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.workload import build_task_spec, load_splits
from slm_flywheel.tasks.drift import build_reference, detect_drift_in_window
from slm_flywheel.tasks.samples import load_new_samples
from slm_flywheel.tasks.training import pull_base_model


@flow(name="drift-check")
def drift_check(workload: str, config_path: str | None = None) -> dict[str, Any]:
    """Compare the samples since the last retrain with the champion's reference.

    1. load the samples since the watermark (contract-checked, unreadable files quarantined;
       nothing is advanced)
    2. build (or reuse) the champion's reference
    3. run the drift tests; the report goes to MLflow and to a Prefect artifact
    """
    settings = load_settings(config_path)
    config = settings.workload(workload)
    spec = build_task_spec(workload, config, settings.require_data_dir())
    splits = load_splits(spec, config, settings.require_data_dir())
    client = mlflow_client(settings)
    # Samples
    window = load_new_samples(settings, workload, spec)
    # Drift
    champion = build_reference(settings, client, spec, list(splits["validation"]["text"]), pull_base_model(settings))
    report, _ = detect_drift_in_window(settings, client, spec, window, champion)
    quarantined_files = [f"{moved.path}: {moved.reason}" for moved in window.quarantined_files]
    return {**report.to_dict(), "quarantined": window.quarantined, "quarantined_files": quarantined_files}
