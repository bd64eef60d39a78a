"""The production stack on real engines: `deployments/stack.py` starts PostgreSQL, MLflow and
Prefect on it, a process worker, the webhook receiver and two serving replicas; the loop then runs
through it the way production does.

Both workloads' `nightly-retrain` runs are created through the Prefect API (what the schedule
does) and run by the worker at the same time; during them a reviewer sets `champion` with
MlflowClient (what the MLflow UI does) and the webhook carries it to both replicas; a `promote`
run pushes the other workload's candidate to both replicas; `rollback-guard` runs on its
deployment. Then: the registry history has every move once, every replica routes to its
registry champion, each replica's capture holds its share of the traffic, the locks are free, and
no service logged a lock or database error. `down` leaves no process behind.

The second workload is a second classification workload (`card-intent`, on banking77) rather than
restaurant-slots: the tiny random model gives no valid extraction JSON, which the smoke prediction
on every push rightly refuses. The stack deploys the team's own prefect.yaml (`stack.prefect_file`),
the project's with restaurant-slots' deployments renamed to card-intent's: a deployment's run form
lists only configured workloads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from slm_flywheel.config import load_settings
from slm_flywheel.serving.server import free_port
from slm_flywheel.deployments.stack import alive
from tests.conftest import REPO, prefect_api

pytestmark = pytest.mark.slow
WORKLOADS = ("banking-intent", "card-intent")
NIGHTLY = {"banking-intent": "nightly-retrain/banking-intent", "card-intent": "nightly-retrain/card-intent"}
TRAFFIC = {"banking-intent": 60, "card-intent": 40}
# What a lock or database problem looks like in MLflow's, Prefect's, the worker's and PostgreSQL's logs.
DATABASE_ERRORS = re.compile(
    r"database is locked|deadlock detected|could not serialize|OperationalError|IntegrityError|UniqueViolation"
    r"|lock timeout|could not obtain lock|too many connections|FATAL:|PANIC:",
    re.IGNORECASE,
)


def _config(home: Path, stack_dir: Path, tiny_model_dir: Path, data_dir: Path) -> Path:
    ports = {name: free_port() for name in ("postgres", "mlflow", "prefect", "webhook", "replica-0", "replica-1")}
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(home), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    data["serving"] = {"replicas": [f"http://127.0.0.1:{ports[f'replica-{i}']}" for i in range(2)], "capture_flush_seconds": 0.5}
    data["webhook"] = {"port": ports["webhook"], "secret": "whsec-stack-test"}
    data["stack"] = {"dir": str(stack_dir), "postgres_port": ports["postgres"], "mlflow_port": ports["mlflow"], "prefect_port": ports["prefect"], "start_timeout_s": 240}
    banking = data["workloads"]["banking-intent"]
    data["workloads"] = {"banking-intent": banking, "card-intent": {**banking, "prompt_template": "Card support message: {text}\nIntent:"}}
    for workload in data["workloads"].values():  # CI-sized, as in tests/flows
        workload["splits"]["golden_fraction"] = 0.01
        workload["training"].update(max_examples=48, batch_size=8, lora_r=4, lora_alpha=8, bf16=False)
        workload["training"].pop("lora_layers", None)
        workload.update(promotion="review", eval_batch_size=32)
        workload["drift"] = {"min_window": 20, "n_permutations": 100}
        workload["relabel"] = {"budget": 20, "review_share": 0.1, "min_per_label": 0}
        workload["guard"] = {"audit_budget": 0}
    # The team's own prefect.yaml: restaurant-slots' deployments become card-intent's.
    prefect_file = home.parent / "prefect.yaml"
    prefect_file.write_text((REPO / "prefect.yaml").read_text().replace("restaurant-slots", "card-intent"))
    data["stack"]["prefect_file"] = str(prefect_file)
    path = home.parent / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, data_dir):
    from slm_flywheel.deployments.stack import Stack

    # PostgreSQL runs as the `postgres` user under root: its folder must be reachable by it, which
    # pytest's tmp (0700) is not.
    stack_dir = Path(tempfile.mkdtemp(prefix="flywheel-stack-"))
    stack_dir.chmod(0o755)
    config = _config(tmp_path_factory.mktemp("stack") / "home", stack_dir, tiny_model_dir, data_dir)
    with pytest.MonkeyPatch.context() as patch:
        # Test pacing: no schedule fires by itself, the worker polls every second, MLflow re-reads
        # its webhook list every second; no UI to build.
        for key, value in {
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1", "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        }.items():
            patch.setenv(key, value)
        patch.delenv("PREFECT_API_URL", raising=False)
        running = Stack(load_settings(config), config)
        try:
            running.up()
            yield running
        finally:
            running.down()
            shutil.rmtree(stack_dir, ignore_errors=True)


def _client(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Scoped:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: stack.prefect_api})
            self._settings.__enter__()
            self._client = get_client(sync_client=True).__enter__()
            return self._client

        def __exit__(self, *exc):
            self._client.__exit__(*exc)
            self._settings.__exit__(*exc)

    return _Scoped()


def _run(stack, deployment: str, parameters: dict):
    with _client(stack) as client:
        found = client.read_deployment_by_name(deployment)
        return client.create_flow_run_from_deployment(found.id, parameters=parameters)


def _wait(stack, runs: list, state: str = "final", timeout: float = 600) -> list:
    """Poll the runs until each is final (asserting it completed) or, with state="running", running."""
    deadline = time.monotonic() + timeout
    with _client(stack) as client:
        while time.monotonic() < deadline:
            current = [client.read_flow_run(run.id) for run in runs]
            for run in current:
                if run.state.is_final():
                    assert run.state.is_completed(), f"{run.name}: {run.state.type} {run.state.message}\n{stack.tail('worker', 6000)}"
            if all(r.state.is_final() for r in current) or (state == "running" and all(r.state.is_running() or r.state.is_final() for r in current)):
                return current
            time.sleep(1)
    pytest.fail(f"flow runs not {state} after {timeout} s:\n{stack.tail('worker', 6000)}")


def _routes(stack) -> list[dict[str, str]]:
    return [httpx.get(f"{url}/v1/workloads", timeout=10).json()["workloads"] for url in stack.settings.serving.replicas]


def _wait_routes(stack, expected: dict[str, str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (routes := _routes(stack)) != [expected] * len(stack.settings.serving.replicas):
        assert time.monotonic() < deadline, f"replicas serve {routes}, expected {expected} everywhere:\n{stack.tail('worker', 6000)}\n{stack.tail('webhook')}"
        time.sleep(1)


def _champions(registry: MlflowClient) -> dict[str, str]:
    return {w: f"{w}@v{registry.get_model_version_by_alias(w, 'champion').version}" for w in WORKLOADS}


def test_status_shows_every_service_healthy_with_the_ui_urls(stack):
    statuses = stack.status()
    assert {s.name for s in statuses} == {"postgres", "mlflow", "prefect", "worker", "webhook", "replica-0", "replica-1"}
    assert all(s.healthy and s.pid for s in statuses), statuses
    shown = subprocess.run([sys.executable, "-m", "slm_flywheel.app.cli", "stack", "status", "--config", str(stack.config_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"MLflow UI: {stack.mlflow_url}" in shown.stdout and f"Prefect UI: {stack.prefect_url}" in shown.stdout
    assert stack.database_server.startswith("postgresql://")
    assert all(url.startswith("http://127.0.0.1:") for url in (stack.mlflow_url, stack.prefect_url, *stack.settings.serving.replicas))


def test_two_nightly_runs_a_reviewer_alias_a_promotion_and_the_guard_through_the_stack(stack):
    from slm_flywheel.flows.train_adapter import train_adapter_flow
    from slm_flywheel.app.simulate import simulate
    from slm_flywheel.models.promotion import OUTSIDE_ACTOR, history
    from slm_flywheel.serving.capture import read_samples

    settings, config = stack.settings, str(stack.config_path)
    registry = MlflowClient(stack.mlflow_url, stack.mlflow_url)
    # Launch: v1 of each workload becomes champion (the webhook brings it to both replicas), and a
    # smaller banking v2 waits as challenger for a reviewer.
    with prefect_api(stack.prefect_api):
        for workload in WORKLOADS:
            assert train_adapter_flow(workload=workload, config_path=config).alias == "champion"
        assert train_adapter_flow(workload="banking-intent", config_path=config, max_examples=16).alias == "challenger"
    _wait_routes(stack, {w: f"{w}@v1" for w in WORKLOADS})

    # Production traffic, spread over both replicas; each replica's writer captures its share.
    for workload, count in TRAFFIC.items():
        for index, url in enumerate(settings.serving.replicas):
            assert simulate(settings, workload, "prior-shift", count // 2, url, concurrency=4, seed=index).failed == 0
    def captured() -> dict[tuple[str, str], int]:  # (workload, replica) -> rows (pushes' smoke predictions included)
        return {(w, r): int(n) for w in WORKLOADS for r, n in read_samples(settings.samples_dir, w)["replica_id"].value_counts().items()}

    deadline = time.monotonic() + 60
    while not all(captured().get((w, f"replica-{i}"), 0) >= TRAFFIC[w] // 2 for w in WORKLOADS for i in range(2)):
        assert time.monotonic() < deadline, f"captured {captured()}, sent {TRAFFIC} over two replicas"
        time.sleep(0.5)
    assert {replica for _, replica in captured()} == {"replica-0", "replica-1"}

    # Both nightly runs at once on the worker; the reviewer's alias change lands during them.
    nightly = [_run(stack, NIGHTLY[w], {"workload": w, "force": True}) for w in WORKLOADS]
    _wait(stack, nightly, state="running")
    registry.set_registered_model_alias("banking-intent", "champion", "2")  # what the MLflow UI does
    _wait_routes(stack, {"banking-intent": "banking-intent@v2", "card-intent": "card-intent@v1"})
    _wait(stack, nightly)
    candidates = {w: max(int(v.version) for v in registry.search_model_versions(f"name='{w}'")) for w in WORKLOADS}
    assert candidates == {"banking-intent": 3, "card-intent": 2}  # each run registered its candidate
    assert all("challenger" in registry.get_model_version(w, str(v)).aliases for w, v in candidates.items())

    # A reviewer promotes card-intent's candidate through its deployment: both replicas switch.
    _wait(stack, [_run(stack, "promote/manual", {"workload": "card-intent", "version": 2, "reviewer": "ana", "reason": "reviewed"})])
    _wait_routes(stack, {"banking-intent": "banking-intent@v2", "card-intent": "card-intent@v2"})
    guard = _wait(stack, [_run(stack, "rollback-guard/rollback-guard", {})])[0]

    # Let the sync-serving runs the webhook started finish, then check the whole system.
    with _client(stack) as client:
        _wait(stack, client.read_flow_runs(limit=200))
    moves = {w: [(e.action, e.actor, e.from_version, e.to_version) for e in history(registry, w)] for w in WORKLOADS}
    assert moves == {
        "banking-intent": [("bootstrap", "train-adapter", None, 1), ("promote", OUTSIDE_ACTOR, 1, 2)],
        "card-intent": [("bootstrap", "train-adapter", None, 1), ("promote", "ana", 1, 2)],
    }, moves
    assert _routes(stack) == [_champions(registry)] * 2
    assert guard.state.is_completed()
    with _client(stack) as client:
        limits = {limit.name: limit for limit in client.read_global_concurrency_limits(limit=100)}
    for workload in WORKLOADS:
        for kind in ("retrain", "promote"):
            limit = limits[f"flywheel-{kind}-{workload}"]
            assert (limit.limit, limit.active_slots) == (1, 0), limit
    for log in [*stack.logs.glob("*.log"), stack.dir / "postgres" / "postgres.log"]:
        problems = [line for line in log.read_text(errors="replace").splitlines() if DATABASE_ERRORS.search(line)]
        assert not problems, f"{log.name}:\n" + "\n".join(problems[:20])


def test_down_leaves_no_process_behind(stack):
    pids = [status.pid for status in stack.status() if status.pid]
    stopped = stack.down()
    assert {"mlflow", "prefect", "worker", "webhook", "replica-0", "replica-1", "postgres"} <= set(stopped)
    assert not stack.marked_processes()
    assert not [pid for pid in pids if alive(pid)]
    assert all(not status.healthy and status.pid is None for status in stack.status())
