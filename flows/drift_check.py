"""The `drift-check` flow: the nightly run's drift stage alone (hourly; it moves no watermark)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow

from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.context import load_workload
from slm_flywheel.models.drift import DriftReport
from slm_flywheel.tasks.drift import build_reference, detect_drift_in_window
from slm_flywheel.tasks.samples import load_new_samples
from slm_flywheel.tasks.training import pull_base_model


@dataclass
class DriftCheck:
    """What `drift-check` found: the drift report on the window and what was quarantined."""

    workload: str
    report: DriftReport
    quarantined: int = 0
    quarantined_files: list[str] = field(default_factory=list)  # "<path>: <reason>", moved aside unread

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, **self.report.to_dict(), "quarantined": self.quarantined, "quarantined_files": self.quarantined_files}


@flow(name="drift-check")
def drift_check(workload: str, config_path: str | None = None) -> DriftCheck:
    """Compare the samples since the last retrain with the champion's reference.

    1. load the samples since the watermark (contract-checked, unreadable files quarantined;
       nothing is advanced)
    2. build (or reuse) the champion's reference
    3. run the drift tests; the report goes to MLflow and to a Prefect artifact
    """
    context = load_workload(workload, config_path)
    client = mlflow_client(context.settings)
    # Samples
    window = load_new_samples(context)
    # Drift
    champion = build_reference(context, client, pull_base_model(context.settings))
    report, _ = detect_drift_in_window(context, client, window, champion)
    return DriftCheck(workload, report, window.quarantined, [f"{moved.path}: {moved.reason}" for moved in window.quarantined_files])
