"""The `promote` flow: make a version the champion and serve it everywhere, all or nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow
from prefect.transactions import transaction

from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.context import load_workload
from slm_flywheel.models.registry import download_adapter, get_version
from slm_flywheel.tasks.locks import workload_lock
from slm_flywheel.tasks.push import Replica, adapter_name, load_on_replicas, promote_alias, smoke_test, switch_routes, unload_previous


SMOKE_INPUTS = 3  # golden inputs each replica answers with a new adapter before it takes traffic


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: the new champion, the one it replaced, where it serves, who moved it."""

    workload: str
    champion: int
    previous: int | None
    replicas: list[str]
    actor: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@flow(name="promote")
def promote(
    workload: str,
    version: int,
    reviewer: str,
    reason: str = "reviewer approval",
    config_path: str | None = None,
    evidence: dict[str, Any] | None = None,
    action: str = "promote",
    smoke_texts: list[str] | None = None,
) -> Promotion:
    """Promote `version` of `workload` and push it to every configured serving replica.

    Inside one transaction (any failure rolls back every completed step):
    1. move `champion` to the version (the old one becomes `previous-champion`; history recorded)
    2. load it on every replica as `<workload>@v<N>`
    3. smoke-test it on every replica by name, before it takes traffic
    4. switch every replica's workload route to it
    Then, committed: unload the adapters that no longer serve. The workload's `promote` lock is
    held throughout, so two promotions (or a promotion and a `sync-serving`) never interleave.
    `smoke_texts`: the smoke inputs, from a caller that has the splits loaded (default: the
    workload's first golden inputs).
    """
    context = load_workload(workload, config_path)
    settings = context.settings
    client = mlflow_client(settings)
    record = get_version(client, workload, version=version)
    adapter_dir = download_adapter(client, record, settings.adapters_dir)
    smoke_texts = smoke_texts or context.golden_texts(SMOKE_INPUTS)
    replicas = [Replica(url, settings.serving.admin_token) for url in settings.serving.replicas]
    name = adapter_name(workload, version)
    with workload_lock("promote", workload):  # one promotion of a workload at a time
        with transaction():
            entry = promote_alias(client, workload, version, reviewer, reason, evidence or {}, action=action)
            load_on_replicas(replicas, name, str(adapter_dir))
            smoke_test(replicas, name, smoke_texts)
            previous = switch_routes(replicas, workload, name)
        unload_previous(replicas, previous, name)
    return Promotion(workload, version, entry.from_version, [r.url for r in replicas], reviewer)
