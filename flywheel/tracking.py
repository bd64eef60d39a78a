"""The MLflow client for a configuration (the only place the tracking URI is turned into a client)."""

from __future__ import annotations

from typing import Any

from slm_flywheel.config import Settings


def mlflow_client(settings: Settings) -> Any:
    """An `MlflowClient` on the configured tracking URI (default: SQLite in the state dir)."""
    from mlflow import MlflowClient

    settings.home.mkdir(parents=True, exist_ok=True)
    uri = settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
