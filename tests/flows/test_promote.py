"""The `promote` flow against two real serving replicas on loopback: all or nothing, with the
registry on SQLite and on PostgreSQL."""

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from slm_flywheel.flows.promote import promote
from slm_flywheel.flows.train_adapter import train_adapter_flow
from slm_flywheel.config import load_settings
from slm_flywheel.models.promotion import history
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.client import ServingClient
from slm_flywheel.serving.server import BackgroundServer, build_state, free_port
from tests.conftest import BACKENDS, registry_uri


@pytest.fixture
def tracking_uri(request, tmp_path):
    """SQLite, or the backend a test is parametrized with (each extra backend costs a setup)."""
    return registry_uri(getattr(request, "param", "sqlite"), tmp_path, request)


@pytest.fixture
def two_replicas(tiny_config):
    ports = [free_port(), free_port()]
    data = yaml.safe_load(tiny_config.read_text())
    data["serving"] = {"replicas": [f"http://127.0.0.1:{p}" for p in ports], "admin_token": "tok", "capture_flush_seconds": 0.5}
    tiny_config.write_text(yaml.safe_dump(data))
    assert train_adapter_flow(workload="banking-intent", config_path=str(tiny_config)).alias == "champion"
    assert train_adapter_flow(workload="banking-intent", config_path=str(tiny_config), max_examples=16).alias == "challenger"
    settings = load_settings(tiny_config)
    servers, states = [], []
    for index, port in enumerate(ports):
        state = build_state(settings, f"replica-{index}", bf16=False)  # loads the champion, v1
        server = BackgroundServer(create_app(state), port=port).__enter__()
        servers.append(server)
        states.append(state)
    yield settings, servers
    for server, state in zip(servers, states):
        server.__exit__(None, None, None)
        state.engine.close()
        state.writer.close()


def _routes(server):
    return httpx.get(f"{server.url}/v1/workloads").json()["workloads"]["banking-intent"]


def _models(server):
    return {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}


@pytest.mark.parametrize("tracking_uri", BACKENDS, indirect=True)
def test_promote_moves_alias_records_history_and_switches_every_replica(two_replicas, tiny_config):
    settings, servers = two_replicas
    assert [_routes(s) for s in servers] == ["banking-intent@v1", "banking-intent@v1"]
    result = promote(workload="banking-intent", version=2, reviewer="ana", reason="looks good", config_path=str(tiny_config))
    assert result.previous == 1
    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    assert int(client.get_model_version_by_alias("banking-intent", "champion").version) == 2
    assert int(client.get_model_version_by_alias("banking-intent", "previous-champion").version) == 1
    entries = history(client, "banking-intent")
    assert [(e.action, e.actor, e.from_version, e.to_version, e.reason) for e in entries] == [("bootstrap", "train-adapter", None, 1, "first version of the workload"), ("promote", "ana", 1, 2, "looks good")]
    for server in servers:
        assert _routes(server) == "banking-intent@v2"
        assert "banking-intent@v1" not in _models(server)  # unloaded after the commit


@pytest.mark.parametrize("tracking_uri", BACKENDS, indirect=True)
def test_a_replica_lost_mid_push_leaves_no_replica_switched_and_the_alias_unchanged(two_replicas, tiny_config, monkeypatch):
    settings, servers = two_replicas
    original = ServingClient.load_adapter

    def load_then_lose_replica_1(self, name, path):
        original(self, name, path)
        if self.base_url == servers[1].url:
            servers[1].__exit__(None, None, None)  # the second replica dies right after loading

    monkeypatch.setattr(ServingClient, "load_adapter", load_then_lose_replica_1)
    with pytest.raises(Exception, match=servers[1].url.replace(".", r"\.")):
        promote(workload="banking-intent", version=2, reviewer="ana", config_path=str(tiny_config))
    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    assert int(client.get_model_version_by_alias("banking-intent", "champion").version) == 1
    with pytest.raises(Exception):
        client.get_model_version_by_alias("banking-intent", "previous-champion")
    # the attempt and its undo are both on record
    assert [(e.action, e.from_version, e.to_version) for e in history(client, "banking-intent")] == [("bootstrap", None, 1), ("promote", 1, 2), ("reverted", 2, 1)]
    assert _routes(servers[0]) == "banking-intent@v1"
    assert "banking-intent@v2" not in _models(servers[0])  # the rollback unloaded it


def test_a_failure_during_the_switch_switches_the_others_back(two_replicas, tiny_config, monkeypatch):
    settings, servers = two_replicas
    original = ServingClient.route

    def lose_replica_1_before_its_switch(self, workload, name, unload_previous=True):
        if self.base_url == servers[1].url and name.endswith("@v2"):
            servers[1].__exit__(None, None, None)
        return original(self, workload, name, unload_previous)

    monkeypatch.setattr(ServingClient, "route", lose_replica_1_before_its_switch)
    with pytest.raises(Exception, match="127.0.0.1"):
        promote(workload="banking-intent", version=2, reviewer="ana", config_path=str(tiny_config))
    assert _routes(servers[0]) == "banking-intent@v1"  # switched, then switched back
    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    assert int(client.get_model_version_by_alias("banking-intent", "champion").version) == 1


def test_a_second_promotion_of_the_workload_waits_for_the_first(two_replicas, tiny_config, monkeypatch):
    import threading

    import slm_flywheel.tasks.locks
    from slm_flywheel.tasks.locks import workload_lock

    settings, servers = two_replicas
    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    outcome = {}
    with workload_lock("promote", "banking-intent"):  # another promotion of this workload is running
        worker = threading.Thread(target=lambda: outcome.update(promotion=promote(workload="banking-intent", version=2, reviewer="ana", config_path=str(tiny_config))))
        asked, real = threading.Event(), slm_flywheel.tasks.locks.concurrency

        def asking(*args, **kwargs):
            asked.set()
            return real(*args, **kwargs)

        monkeypatch.setattr(slm_flywheel.tasks.locks, "concurrency", asking)
        worker.start()
        assert asked.wait(timeout=120), "the second promotion never asked for the lock"
        assert int(client.get_model_version_by_alias("banking-intent", "champion").version) == 1  # nothing touched before it
        assert worker.is_alive()  # and it cannot have passed the lock we hold
    worker.join(timeout=120)
    assert outcome["promotion"].champion == 2 and _routes(servers[0]) == "banking-intent@v2"
