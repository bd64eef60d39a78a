"""Promotion and push as one transaction: the alias moves, every replica loads and smoke-tests the
version, then every replica switches. If anything fails, the Prefect transaction rolls back each
step that completed: routes switch back, new adapters unload, aliases return where they were."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.transactions import get_transaction

from slm_flywheel.models.promotion import PREVIOUS_CHAMPION, HistoryEntry, move_champion, restore_aliases
from slm_flywheel.models.registry import CHAMPION, alias_version
from slm_flywheel.serving.client import ServingClient, ServingError


@dataclass(frozen=True)
class Replica:
    url: str
    token: str | None = None

    def client(self) -> ServingClient:
        return ServingClient(self.url, self.token)


def adapter_name(workload: str, version: int) -> str:
    return f"{workload}@v{version}"


@task(cache_policy=NONE)  # side effect on the registry, undone by its rollback hook
def promote_alias(client: Any, workload: str, version: int, actor: str, reason: str, evidence: dict[str, Any], allow_rolled_back: bool = False, action: str = "promote") -> HistoryEntry:
    """Move `champion` to `version` (the old one becomes `previous-champion`) and record it."""
    before_champion = alias_version(client, workload, CHAMPION)
    before_previous = alias_version(client, workload, PREVIOUS_CHAMPION)
    get_transaction().set("aliases", (client, workload, before_champion.version if before_champion else None, before_previous.version if before_previous else None))
    entry = move_champion(client, workload, version, actor=actor, action=action, reason=reason, evidence=evidence, allow_rolled_back=allow_rolled_back)
    get_run_logger().info("%s: champion v%s -> v%d by %s (%s)", workload, entry.from_version, version, actor, reason)
    return entry


@promote_alias.on_rollback
def _put_aliases_back(transaction: Any) -> None:
    client, workload, champion, previous = transaction.get("aliases")
    restore_aliases(client, workload, champion, previous, reason="push failed on a serving replica: transaction rolled back")


@task(cache_policy=NONE)  # side effect on replicas, undone by its rollback hook
def load_on_replicas(replicas: list[Replica], name: str, source: str) -> list[str]:
    """Load adapter `name` from `source` on every replica (one that already has it is reused)."""
    loaded: list[Replica] = []
    get_transaction().set("loaded", (loaded, name))
    for replica in replicas:
        try:
            with replica.client() as client:
                if name not in client.models():
                    client.load_adapter(name, source)
                    loaded.append(replica)
        except ServingError:
            _unload(loaded, name)  # this step failed: undo its own part before failing
            raise
    return [replica.url for replica in loaded]


def _unload(replicas: list[Replica], name: str) -> None:
    for replica in replicas:
        try:
            with replica.client() as client:
                client.unload_adapter(name)
        except ServingError as exc:
            get_run_logger().warning("could not unload %s from %s: %s", name, replica.url, exc)


@load_on_replicas.on_rollback
def _unload_new(transaction: Any) -> None:
    loaded, name = transaction.get("loaded")
    _unload(loaded, name)


def _smoke(client: ServingClient, name: str, texts: list[str]) -> None:
    for text in texts:
        answer = client.chat(name, text)
        if answer.get("model") != name or answer["choices"][0]["finish_reason"] != "stop":
            raise ServingError(f"{client.base_url}: smoke prediction with {name} gave no valid answer: {answer}")


@task(cache_policy=NONE)  # checks live replicas: a stored pass would prove nothing
def smoke_test(replicas: list[Replica], name: str, texts: list[str]) -> None:
    """Every replica answers `texts` with the new adapter, by name, before it takes traffic."""
    for replica in replicas:
        with replica.client() as client:
            _smoke(client, name, texts)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=[1, 5])  # reconciles a live replica: it must look again every time (idempotent, so retried)
def sync_replica(replica: Replica, workload: str, name: str, source: str, texts: list[str]) -> str:
    """Make one replica serve adapter `name` for `workload` (reconcile, not all-or-nothing): load it
    if missing, smoke-test it, switch the route, unload what it replaced. Returns what it did.

    Against a vLLM server (no routes) "serving" means the versioned adapter is loaded."""
    with replica.client() as client:
        loaded, routes = client.models(), client.routes()
        serving = routes.get(workload) if routes else (name if name in loaded else None)
        if serving == name:
            return "in sync"
        if name not in loaded:
            client.load_adapter(name, source)
        _smoke(client, name, texts)
        if not routes:
            return "loaded"
        previous = client.route(workload, name, unload_previous=True)
    get_run_logger().info("%s: %s now serves %s (was %s)", replica.url, workload, name, previous)
    return f"switched from {previous}"


@task(cache_policy=NONE)  # side effect on replicas, undone by its rollback hook
def switch_routes(replicas: list[Replica], workload: str, name: str) -> dict[str, str | None]:
    """Route `workload` to `name` on every replica; the previous adapters stay loaded until commit."""
    switched: list[tuple[Replica, str | None]] = []
    get_transaction().set("switched", (switched, workload))
    for replica in replicas:
        try:
            with replica.client() as client:
                switched.append((replica, client.route(workload, name, unload_previous=False)))
        except ServingError:
            _switch_back(switched, workload)
            raise
    return {replica.url: previous for replica, previous in switched}


def _switch_back(switched: list[tuple[Replica, str | None]], workload: str) -> None:
    for replica, previous in switched:
        if previous is None:
            continue
        try:
            with replica.client() as client:
                client.route(workload, previous, unload_previous=True)
        except ServingError as exc:
            get_run_logger().error("could not switch %s back to %s on %s: %s", workload, previous, replica.url, exc)


@switch_routes.on_rollback
def _routes_back(transaction: Any) -> None:
    switched, workload = transaction.get("switched")
    _switch_back(switched, workload)


@task(cache_policy=NONE)  # side effect on replicas
def unload_previous(replicas: list[Replica], previous: dict[str, str | None], keep: str) -> None:
    """After a committed switch, free the adapters that no longer serve (best effort)."""
    for replica in replicas:
        name = previous.get(replica.url)
        if name and name != keep:
            _unload([replica], name)
