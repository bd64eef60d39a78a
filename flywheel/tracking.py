"""The MLflow client for a configuration (the only place the tracking URI is turned into a client)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slm_flywheel.config import Settings


def mlflow_client(settings: Settings) -> Any:
    """An `MlflowClient` on the configured tracking URI (default: SQLite in the state dir)."""
    from mlflow import MlflowClient

    settings.home.mkdir(parents=True, exist_ok=True)
    uri = settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, settings: Settings, workload: str) -> str:
    """The workload's MLflow experiment, created with artifacts under the state dir when new."""
    name = f"slm-flywheel/{workload}"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # A tracking server decides where artifacts go; a database URI (SQLite or PostgreSQL) would
    # otherwise put them in ./mlruns of whatever directory the process runs in.
    server = (settings.tracking_uri or "").startswith(("http://", "https://", "databricks"))
    location = None if server else (settings.artifact_root / workload).as_uri()
    return client.create_experiment(name, artifact_location=location)


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], prefix: str = "") -> None:
    """Log each metric as a float, its key prefixed (`gate_`, `golden_`, ...)."""
    for key, value in metrics.items():
        client.log_metric(run_id, f"{prefix}{key}", float(value))


def log_files(client: Any, run_id: str, files: Mapping[str, str | bytes], artifact_path: str) -> None:
    """Write `files` (name -> text or bytes) to a temporary folder and log them under `artifact_path`."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        client.log_artifacts(run_id, tmp, artifact_path)
