"""The `sync-serving` flow: every replica serves the registry's champion of every workload.

Covers what `promote` does not see: a reviewer who set the `champion` alias in the MLflow UI, and
a replica that restarted (or joined) with an older adapter. Runs every few minutes, and at once
when MLflow's registry webhook reports a new `champion` alias (`deployments/webhook.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from slm_flywheel.config import load_settings
from slm_flywheel.tracking import mlflow_client
from slm_flywheel.flows.promote import SMOKE_INPUTS
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.promotion import adopt_outside_move
from slm_flywheel.models.registry import CHAMPION, alias_version, download_adapter
from slm_flywheel.serving.client import ServingError
from slm_flywheel.tasks.locks import workload_lock
from slm_flywheel.tasks.push import Replica, adapter_name, sync_replica


class SyncError(RuntimeError):
    """One or more replicas could not be brought to the champion; the message names each."""


@dataclass(frozen=True)
class WorkloadSync:
    """One workload after `sync-serving`: its champion (None: none yet) and what each replica did."""

    workload: str
    champion: int | None
    adopted: bool = False  # the champion alias was moved outside slm-flywheel and adopted
    replicas: dict[str, str] = field(default_factory=dict)  # replica URL -> "in sync", "switched from ...", "failed: ..."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@flow(name="sync-serving")
def sync_serving(config_path: str | None = None, workloads: list[str] | None = None) -> dict[str, WorkloadSync]:
    """For each workload (default: all configured):

    1. read the `champion` alias; a move made outside slm-flywheel (the MLflow UI) is adopted:
       the former champion becomes `previous-champion` and the history records the move
    2. on every replica serving something else: load `<workload>@v<N>`, smoke-test it, switch the
       route (each replica on its own: one replica down does not hold the others back)
    Fails at the end, naming every replica it could not sync.
    """
    settings = load_settings(config_path)
    client = mlflow_client(settings)
    replicas = [Replica(url, settings.serving.admin_token) for url in settings.serving.replicas]
    results: dict[str, WorkloadSync] = {}
    failures: list[str] = []
    for workload in workloads or list(settings.workloads):
        context = resolve_workload(settings, workload)  # an unknown workload is a configuration error, named
        with workload_lock("promote", workload):  # never in the middle of a promotion
            champion = alias_version(client, workload, CHAMPION)
            if champion is None:
                results[workload] = WorkloadSync(workload, None)
                continue
            adopted = adopt_outside_move(client, workload)
            if adopted is not None:
                get_run_logger().info("%s: adopted a champion move made outside slm-flywheel: v%s -> v%d", workload, adopted.from_version, adopted.to_version)
            name = adapter_name(workload, champion.version)
            source = str(download_adapter(client, champion, settings.adapters_dir))
            texts = context.golden_texts(SMOKE_INPUTS)
            done: dict[str, str] = {}
            for replica in replicas:
                try:
                    done[replica.url] = sync_replica(replica, workload, name, source, texts)
                except ServingError as exc:
                    done[replica.url] = f"failed: {exc}"
                    failures.append(f"{workload} on {replica.url}: {exc}")
            results[workload] = WorkloadSync(workload, champion.version, adopted is not None, done)
    if failures:
        raise SyncError("sync-serving could not bring every replica to the champion: " + "; ".join(failures))
    return results
