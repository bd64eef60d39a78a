"""The `promote` flow: make a version the champion and serve it everywhere, all or nothing."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.transactions import transaction

from slm_flywheel.config import load_settings
from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.registry import download_adapter, get_version
from slm_flywheel.tasks.locks import workload_lock
from slm_flywheel.tasks.push import Replica, adapter_name, load_on_replicas, promote_alias, smoke_inputs, smoke_test, switch_routes, unload_previous


@flow(name="promote")
def promote(
    workload: str,
    version: int,
    reviewer: str,
    reason: str = "reviewer approval",
    config_path: str | None = None,
    evidence: dict[str, Any] | None = None,
    action: str = "promote",
) -> dict[str, Any]:
    """Promote `version` of `workload` and push it to every configured serving replica.

    Inside one transaction (any failure rolls back every completed step):
    1. move `champion` to the version (the old one becomes `previous-champion`; history recorded)
    2. load it on every replica as `<workload>@v<N>`
    3. smoke-test it on every replica by name, before it takes traffic
    4. switch every replica's workload route to it
    Then, committed: unload the adapters that no longer serve. The workload's `promote` lock is
    held throughout, so two promotions (or a promotion and a `sync-serving`) never interleave.
    """
    settings = load_settings(config_path)
    client = mlflow_client(settings)
    record = get_version(client, workload, version=version)
    adapter_dir = download_adapter(client, record, settings.adapters_dir)
    smoke_texts = smoke_inputs(settings, workload)
    replicas = [Replica(url, settings.serving.admin_token) for url in settings.serving.replicas]
    name = adapter_name(workload, version)
    with workload_lock("promote", workload):  # one promotion of a workload at a time
        with transaction():
            entry = promote_alias(client, workload, version, reviewer, reason, evidence or {}, action=action)
            load_on_replicas(replicas, name, str(adapter_dir))
            smoke_test(replicas, name, smoke_texts)
            previous = switch_routes(replicas, workload, name)
        unload_previous(replicas, previous, name)
    return {"workload": workload, "champion": version, "previous": entry.from_version, "replicas": [r.url for r in replicas], "actor": reviewer}
