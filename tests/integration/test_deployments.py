"""The deployed system on loopback: a Prefect server, an MLflow tracking server, a process worker,
a serving replica and the webhook endpoint, each a real server.

`flywheel deploy` deploys prefect.yaml; a `promote` flow run is created through the Prefect API
the way the UI does it, and the worker runs it. A reviewer then sets the `champion` alias in the
registry (as the MLflow UI does): MLflow calls the webhook, the webhook starts `sync-serving`,
and the replica follows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from slm_flywheel.deployments.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, register_webhook, sign
from slm_flywheel.config import load_settings
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.server import BackgroundServer, build_state, free_port
from tests.conftest import REPO, fresh_sqlite, prefect_api

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SECRET = "whsec-test"
WORKLOAD = "banking-intent"


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, data_dir, sqlite_template):
    from slm_flywheel.flows.train_adapter import train_adapter_flow

    tmp = tmp_path_factory.mktemp("stack")
    fresh_sqlite(sqlite_template, tmp)  # the server finds MLflow's schema in place
    prefect_port, mlflow_port, replica_port, webhook_port = (free_port() for _ in range(4))
    api = f"http://127.0.0.1:{prefect_port}/api"
    tracking = f"http://127.0.0.1:{mlflow_port}"
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    base_env.pop("PREFECT_API_URL", None)
    processes: list[subprocess.Popen] = []
    prefect_env = {
        **base_env,
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # the schedules are declared, not run, here
        "PREFECT_UI_ENABLED": "false",
    }
    processes.append(_start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)], prefect_env, tmp / "prefect.log"))
    # Loopback webhooks allowed; the server's webhook list cached 1 s (default 60 s after registering).
    mlflow_env = {**base_env, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_CACHE_TTL": "0",  # no cache: a webhook registered by a test gets the next event
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as the stack runs it (deployments/stack.py)
    processes.append(_start(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        mlflow_env, tmp / "mlflow.log",
    ))
    try:
        _wait_healthy(f"{api}/health", processes[0], tmp / "prefect.log")
        _wait_healthy(f"{tracking}/health", processes[1], tmp / "mlflow.log")
        data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
        data.update(home=str(tmp / "state"), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=tracking)
        data["serving"] = {"port": replica_port, "replicas": [f"http://127.0.0.1:{replica_port}"], "capture_flush_seconds": 0.5}
        data["webhook"] = {"port": webhook_port}  # the secret comes from FLYWHEEL_WEBHOOK__SECRET
        workload = data["workloads"][WORKLOAD]
        workload["splits"]["golden_fraction"] = 0.01
        workload["training"].update(max_examples=48, batch_size=8, lora_r=4, lora_alpha=8, bf16=False)
        workload["training"].pop("lora_layers", None)
        config = tmp / "flywheel.yaml"
        config.write_text(yaml.safe_dump(data))
        with prefect_api(api):
            assert train_adapter_flow(workload=WORKLOAD, config_path=str(config)).version == 1
            assert train_adapter_flow(workload=WORKLOAD, config_path=str(config), max_examples=16).version == 2
        settings = load_settings(config)
        state = build_state(settings, "replica-0", bf16=False)  # serves the champion, v1
        replica = BackgroundServer(create_app(state), port=replica_port).__enter__()

        env = {**base_env, "PREFECT_API_URL": api, "FLYWHEEL_CONFIG": str(config), "FLYWHEEL_DATA_DIR": str(data_dir), "FLYWHEEL_WEBHOOK__SECRET": SECRET}
        deployed = subprocess.run([str(BIN / "flywheel"), "deploy"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        processes.append(_start([str(BIN / "prefect"), "worker", "start", "--pool", "flywheel-process", "--limit", "2"], {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, tmp / "worker.log"))
        processes.append(_start([str(BIN / "flywheel"), "webhook", "serve"], env, tmp / "webhook.log"))
        _wait_healthy(f"http://127.0.0.1:{webhook_port}/health", processes[-1], tmp / "webhook.log")
        yield {"api": api, "settings": settings, "replica": replica, "webhook": f"http://127.0.0.1:{webhook_port}/mlflow/webhook", "logs": tmp}
        replica.__exit__(None, None, None)
        state.engine.close()
        state.writer.close()
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _deployment(api: str, name: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _wait_for_run(api: str, flow_run_id, logs: Path, timeout: float = 400):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                assert run.state.is_completed(), f"{run.name}: {run.state.type} {run.state.message}\n{(logs / 'worker.log').read_text()[-4000:]}"
                return run
            time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} did not finish in {timeout} s:\n{(logs / 'worker.log').read_text()[-4000:]}")


def _sync_runs(api: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deployment = _deployment(api, "sync-serving/sync-serving")
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def _route(stack) -> str:
    return httpx.get(f"{stack['replica'].url}/v1/workloads").json()["workloads"][WORKLOAD]


def _registry(stack) -> MlflowClient:
    uri = stack["settings"].resolved_tracking_uri
    return MlflowClient(uri, uri)


def test_deploy_declares_every_deployment_with_its_schedule_and_the_locks(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    expected = {
        "nightly-retrain/banking-intent": "0 2 * * *", "nightly-retrain/restaurant-slots": "30 2 * * *",
        "drift-check/banking-intent-hourly": "0 * * * *", "sync-serving/sync-serving": 300.0, "rollback-guard/rollback-guard": 900.0,
        "promote/manual": None, "train-adapter/manual-training": None,
    }
    for name, schedule in expected.items():
        deployment = _deployment(stack["api"], name)
        assert deployment.work_pool_name == "flywheel-process"
        assert "config_path" not in deployment.parameter_openapi_schema["properties"], name  # the form a person fills in
        declared = [s.schedule for s in deployment.schedules]
        if schedule is None:
            assert declared == [], name
        else:
            assert [getattr(s, "cron", None) or getattr(s, "interval").total_seconds() for s in declared] == [schedule], name
    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}), get_client(sync_client=True) as client:
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits(limit=100)}
    assert limits["flywheel-promote-banking-intent"] == 1 and limits["flywheel-retrain-banking-intent"] == 1


def test_the_kubernetes_gpu_work_pool_template_is_accepted(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    template = REPO / "deployments" / "kubernetes" / "gpu-job-template.json"
    env = {**os.environ, "PREFECT_API_URL": stack["api"]}
    created = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "flywheel-k8s-gpu", "--type", "kubernetes", "--base-job-template", str(template)], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}), get_client(sync_client=True) as client:
        pool = client.read_work_pool("flywheel-k8s-gpu")
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["gpu_count"]["default"] == 1
    container = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"


def test_a_promote_run_created_through_the_api_moves_the_alias_records_history_and_switches_the_replica(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from slm_flywheel.models.promotion import history

    assert _route(stack) == f"{WORKLOAD}@v1"
    deployment = _deployment(stack["api"], "promote/manual")
    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}), get_client(sync_client=True) as client:
        # What the UI's "Custom run" form posts: the deployment's parameters.
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"workload": WORKLOAD, "version": 2, "reviewer": "ana", "reason": "reviewed in the UI"})
    _wait_for_run(stack["api"], run.id, stack["logs"])
    registry = _registry(stack)
    assert int(registry.get_model_version_by_alias(WORKLOAD, "champion").version) == 2
    assert int(registry.get_model_version_by_alias(WORKLOAD, "previous-champion").version) == 1
    last = history(registry, WORKLOAD)[-1]
    assert (last.action, last.actor, last.from_version, last.to_version, last.reason) == ("promote", "ana", 1, 2, "reviewed in the UI")
    assert _route(stack) == f"{WORKLOAD}@v2"


def test_a_bad_webhook_signature_is_refused_and_starts_nothing(stack):
    body = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "banking-intent", "alias": "champion", "version": "1"}}'
    now = str(int(time.time()))
    before = len(_sync_runs(stack["api"]))
    forged = httpx.post(stack["webhook"], content=body, headers={SIGNATURE_HEADER: sign("wrong-secret", "d-1", now, body), TIMESTAMP_HEADER: now, DELIVERY_HEADER: "d-1"})
    assert forged.status_code == 401 and "signature does not match" in forged.json()["error"]["message"]
    unsigned = httpx.post(stack["webhook"], content=body)
    assert unsigned.status_code == 401 and "missing" in unsigned.json()["error"]["message"]
    stale = str(int(time.time()) - 3600)
    replayed = httpx.post(stack["webhook"], content=body, headers={SIGNATURE_HEADER: sign(SECRET, "d-2", stale, body), TIMESTAMP_HEADER: stale, DELIVERY_HEADER: "d-2"})
    assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]["message"]
    assert len(_sync_runs(stack["api"])) == before


def test_a_champion_alias_set_in_the_registry_reaches_serving_through_the_webhook(stack):
    from slm_flywheel.models.promotion import OUTSIDE_ACTOR, history

    registry = _registry(stack)
    register_webhook(registry, stack["webhook"], SECRET)
    champion = int(registry.get_model_version_by_alias(WORKLOAD, "champion").version)
    target = 1 if champion == 2 else 2
    before = len(_sync_runs(stack["api"]))
    registry.set_registered_model_alias(WORKLOAD, "champion", str(target))  # what the MLflow UI does
    deadline = time.monotonic() + 60
    while len(runs := _sync_runs(stack["api"])) == before:
        assert time.monotonic() < deadline, f"the webhook started no sync-serving run:\n{(stack['logs'] / 'webhook.log').read_text()[-3000:]}"
        time.sleep(0.5)
    assert all(run.parameters == {"workloads": [WORKLOAD]} for run in runs[: len(runs) - before])
    for run in runs:
        _wait_for_run(stack["api"], run.id, stack["logs"])
    assert _route(stack) == f"{WORKLOAD}@v{target}"
    last = history(registry, WORKLOAD)[-1]
    assert (last.actor, last.from_version, last.to_version) == (OUTSIDE_ACTOR, champion, target)
    assert int(registry.get_model_version_by_alias(WORKLOAD, "previous-champion").version) == champion
