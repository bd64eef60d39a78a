"""Pipeline faults against real components: real Parquet files from real `SampleWriter`s, a real
Prefect server and a real `flywheel webhook serve` process on loopback, real signals.

- a truncated Parquet file and malformed folders in the sample store: the rest is read, each bad
  file or folder is moved to the store's quarantine with its reason, the nightly read goes on;
- two replicas, one flushing after the nightly read: every row is read exactly once over the nights;
- hostile webhook deliveries (oversized, unsigned, non-ASCII signature, garbage bodies): each gets
  a 4xx and no flow run is created; the receiver refuses to start without a reachable Prefect API
  and exits cleanly, leaving no process behind, on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.logging import disable_run_logger

from slm_flywheel.deployments.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from slm_flywheel.config import Settings, WorkloadConfig
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.serving.capture import QUARANTINE_DIR, QUARANTINE_LOG, Sample, SampleWriter
from slm_flywheel.serving.server import free_port
from slm_flywheel.tasks.samples import advance_watermark, load_new_samples
from tests.conftest import REPO

BIN = Path(sys.executable).parent
WORKLOAD = "banking-intent"
SPEC = TaskSpec(WORKLOAD, "classification", "{text}", labels=("card_arrival", "exchange_rate"))
SECRET = "whsec-faults"


def _settings(tmp_path: Path) -> Settings:
    config = WorkloadConfig(task="classification", dataset="banking77", prompt_template="{text}", labels=list(SPEC.labels))
    return Settings(home=tmp_path / "home", workloads={WORKLOAD: config})


def _sample(request_id: str, when: datetime, replica: str) -> Sample:
    return Sample(when, request_id, WORKLOAD, f"text of {request_id}", "card_arrival", True, 0.9, f"{WORKLOAD}@v1", 4.0, replica)


def _writer(root: Path, replica: str) -> SampleWriter:
    # Flushes only when told to: the test decides which rows are on disk at each nightly read.
    return SampleWriter(root, replica, flush_records=10_000, flush_seconds=3600)


def _nightly_read(settings: Settings) -> tuple[list[str], object]:
    """One night's sample stage: load the new samples, then (the run used them) advance."""
    with disable_run_logger():
        window = load_new_samples.fn(resolve_workload(settings, WORKLOAD, SPEC))
        advance_watermark.fn(settings, window)
    return list(window.samples["request_id"]), window


def test_corrupt_parquet_and_malformed_folders_are_quarantined_and_the_rest_is_read(tmp_path, fault_table):
    settings = _settings(tmp_path)
    root = settings.samples_dir
    day = datetime(2026, 11, 28, 9, tzinfo=timezone.utc)
    writer = _writer(root, "replica-a")
    for i in range(30):
        writer.append(_sample(f"a{i}", day + timedelta(seconds=i), "replica-a"))
        if i % 10 == 9:
            writer.flush()  # three files of ten rows
    writer.close()
    workload_dir = root / f"workload={WORKLOAD}"
    files = sorted(workload_dir.glob("date=*/*.parquet"))
    assert len(files) == 3
    truncated = files[1]
    truncated.write_bytes(truncated.read_bytes()[:100])  # a torn write: the footer is gone
    (workload_dir / "date=2026-13-45").mkdir()  # not a date
    (workload_dir / "date=2026-13-45" / "x.parquet").write_bytes(files[0].read_bytes())
    (workload_dir / "scratch").mkdir()  # not a date= folder at all
    (workload_dir / "stray.parquet").write_bytes(files[0].read_bytes())  # a file where folders belong
    no_schema = workload_dir / "date=2026-11-28" / "foreign.parquet"
    import pandas as pd

    pd.DataFrame({"something": [1, 2]}).to_parquet(no_schema)

    read, window = _nightly_read(settings)

    assert sorted(read) == sorted([f"a{i}" for i in range(10)] + [f"a{i}" for i in range(20, 30)])
    reasons = {moved.path: moved.reason for moved in window.quarantined_files}
    assert set(reasons) == {
        truncated.relative_to(root).as_posix(),
        f"workload={WORKLOAD}/date=2026-13-45",
        f"workload={WORKLOAD}/scratch",
        f"workload={WORKLOAD}/stray.parquet",
        no_schema.relative_to(root).as_posix(),
    }
    assert reasons[truncated.relative_to(root).as_posix()].startswith("unreadable Parquet")
    assert "is not date=YYYY-MM-DD" in reasons[f"workload={WORKLOAD}/date=2026-13-45"]
    assert reasons[no_schema.relative_to(root).as_posix()].startswith("missing columns: timestamp")
    for moved in window.quarantined_files:  # moved aside, kept whole, logged with the reason
        assert (root / moved.moved_to).exists() and not (root / moved.path).exists()
    log = [json.loads(line) for line in (root / QUARANTINE_DIR / QUARANTINE_LOG).read_text().splitlines()]
    assert {entry["path"]: entry["reason"] for entry in log} == reasons
    assert _nightly_read(settings)[0] == []  # the next night: nothing new, nothing quarantined twice
    fault_table.record("store: truncated parquet + malformed folders", sent=30, answered=30, captured=20, quarantined=10, lost=0)


def test_two_writers_and_a_late_flush_every_row_is_read_exactly_once(tmp_path, fault_table):
    settings = _settings(tmp_path)
    root = settings.samples_dir
    start = datetime(2026, 11, 28, 22, tzinfo=timezone.utc)
    a, b = _writer(root, "replica-a"), _writer(root, "replica-b")
    sent: list[str] = []
    for i in range(10):  # both replicas answer through the evening, interleaved in time
        for replica, writer in (("a", a), ("b", b)):
            request_id = f"{replica}{i}"
            writer.append(_sample(request_id, start + timedelta(seconds=2 * i + (replica == "b")), f"replica-{replica}"))
            sent.append(request_id)
    a.flush()  # replica b has not flushed yet when the nightly reads
    nights = [_nightly_read(settings)[0]]
    assert sorted(nights[0]) == sorted(f"a{i}" for i in range(10))
    b.flush()  # the late flush: its rows are older than the newest row already read
    for i in range(10, 15):
        a.append(_sample(f"a{i}", start + timedelta(hours=1, seconds=i), "replica-a"))
        sent.append(f"a{i}")
    a.close()
    b.close()
    nights.append(_nightly_read(settings)[0])
    nights.append(_nightly_read(settings)[0])
    assert sorted(nights[1]) == sorted([f"b{i}" for i in range(10)] + [f"a{i}" for i in range(10, 15)])
    assert nights[2] == []
    read = [request_id for night in nights for request_id in night]
    assert sorted(read) == sorted(sent) and len(read) == len(set(read))  # every row, exactly once
    fault_table.record("store: 2 replicas, late flush after the nightly read", sent=len(sent), answered=len(sent), captured=len(read), lost=len(set(sent) - set(read)))


def test_a_window_not_used_is_read_again(tmp_path):
    """A run that does not advance (a window too small to test) leaves the same rows for the next."""
    settings = _settings(tmp_path)
    writer = _writer(settings.samples_dir, "replica-a")
    writer.append(_sample("r0", datetime(2026, 11, 28, tzinfo=timezone.utc), "replica-a"))
    writer.close()
    with disable_run_logger():
        first = load_new_samples.fn(resolve_workload(settings, WORKLOAD, SPEC))
        again = load_new_samples.fn(resolve_workload(settings, WORKLOAD, SPEC))
        advance_watermark.fn(settings, again)
        after = load_new_samples.fn(resolve_workload(settings, WORKLOAD, SPEC))
    assert list(first.samples["request_id"]) == list(again.samples["request_id"]) == ["r0"]
    assert after.samples.empty


# ---------------------------------------------------------------------------------------------
# The webhook receiver


def _env(config: Path, api: str | None) -> dict[str, str]:
    env = {**os.environ, "FLYWHEEL_CONFIG": str(config), "FLYWHEEL_WEBHOOK__SECRET": SECRET, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    return env


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
        time.sleep(0.3)
    pytest.fail(f"{url} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def webhook_config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("webhook")
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(tmp / "home"))
    data["webhook"] = {"port": free_port()}
    config = tmp / "flywheel.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server on loopback with a `sync-serving` deployment (no worker: a flow run
    it gets stays scheduled, and is counted)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp / "home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp / "prefect.log")
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(f"{api}/health", server, tmp / "prefect.log")
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("sync-serving")
            client.create_deployment(flow_id=flow_id, name="sync-serving")
        yield api
    finally:
        _stop(server)


def _flow_runs(api: str) -> int:
    response = httpx.post(f"{api}/flow_runs/count", json={}, timeout=10)
    response.raise_for_status()
    return int(response.json())


@pytest.fixture(scope="module")
def webhook(prefect_api, webhook_config, tmp_path_factory):
    log = tmp_path_factory.mktemp("webhook-log") / "webhook.log"
    port = yaml.safe_load(webhook_config.read_text())["webhook"]["port"]
    process = _start([str(BIN / "flywheel"), "webhook", "serve"], _env(webhook_config, prefect_api), log)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, log)
        yield {"url": f"http://127.0.0.1:{port}/mlflow/webhook", "port": port, "api": prefect_api, "log": log}
    finally:
        _stop(process)


def _signed(body: bytes, delivery: str = "d-1", secret: str = SECRET) -> dict[str, str]:
    now = str(int(time.time()))
    return {SIGNATURE_HEADER: sign(secret, delivery, now, body), TIMESTAMP_HEADER: now, DELIVERY_HEADER: delivery, "Content-Type": "application/json"}


def _raw(port: int, head: str, body: bytes = b"") -> int:
    """Send a request head (and maybe part of a body) on a raw socket; the status the server answers
    with before the rest of the body comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow
def test_hostile_webhook_deliveries_get_4xx_and_start_no_flow_run(webhook, fault_table):
    url, port, api = webhook["url"], webhook["port"], webhook["api"]
    event = {"entity": "model_version_alias", "action": "created", "data": {"name": WORKLOAD, "alias": "champion", "version": "1"}}
    before = _flow_runs(api)
    statuses: dict[str, int] = {}
    huge = 64 * 1024 * 1024
    # 64 MB declared, headers unsigned / signed: answered before one byte of the body is sent.
    statuses["64 MB unsigned"] = _raw(port, f"POST /mlflow/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {huge}\r\n")
    signed_head = "".join(f"{k}: {v}\r\n" for k, v in _signed(b"{}").items())
    statuses["64 MB signed headers"] = _raw(port, f"POST /mlflow/webhook HTTP/1.1\r\nHost: x\r\n{signed_head}Content-Length: {huge}\r\n")
    with httpx.Client(timeout=30) as client:
        # Chunked (no Content-Length): the stream is cut at the limit.
        chunks = (b"x" * 65536 for _ in range(4))
        statuses["256 kB chunked"] = client.post(url, content=chunks, headers=_signed(b"")).status_code
        statuses["non-ASCII signature"] = client.post(url, content=b"{}", headers={**_signed(b"{}"), SIGNATURE_HEADER: "v1,\u00e9\u00e9".encode("utf-8")}).status_code
        statuses["non-ASCII delivery id"] = client.post(url, content=b"{}", headers={**_signed(b"{}"), DELIVERY_HEADER: "d-\u00e9".encode("utf-8")}).status_code
        statuses["forged signature"] = client.post(url, content=json.dumps(event).encode(), headers=_signed(json.dumps(event).encode(), secret="wrong")).status_code
        for name, body in {
            "signed, not JSON": b"\xff\xfe{not json",
            "signed, a list": b"[1, 2]",
            "signed, data a string": json.dumps({**event, "data": "champion"}).encode(),
            "signed, entity a number": json.dumps({**event, "entity": 7}).encode(),
            "signed, nested 30k deep": b"[" * 30_000 + b"]" * 30_000,
        }.items():
            statuses[name] = client.post(url, content=body, headers=_signed(body, delivery=f"d-{len(statuses)}")).status_code
        list_name = json.dumps({**event, "data": {**event["data"], "name": ["banking-intent"]}}).encode()
        ignored = client.post(url, content=list_name, headers=_signed(list_name, delivery="d-list"))
        assert ignored.status_code == 200 and "not a configured workload" in ignored.json()["ignored"]
        after_bad = _flow_runs(api)
        good = json.dumps(event).encode()
        started = client.post(url, content=good, headers=_signed(good, delivery="d-good"))  # the control: this one starts a run
    expected = {"64 MB unsigned": 401, "64 MB signed headers": 413, "256 kB chunked": 413, "non-ASCII signature": 401, "non-ASCII delivery id": 401, "forged signature": 401}
    assert {name: status for name, status in statuses.items()} == {name: expected.get(name, 400) for name in statuses}, statuses
    assert after_bad == before  # no hostile delivery started anything
    assert started.status_code == 202, started.text
    assert _flow_runs(api) == before + 1
    assert "Traceback" not in webhook["log"].read_text()
    fault_table.record("webhook: oversized / unsigned / garbage deliveries", sent=len(statuses), answered=sum(400 <= s < 500 for s in statuses.values()), captured=after_bad - before, lost=sum(s >= 500 for s in statuses.values()))


def test_webhook_refuses_to_start_without_a_reachable_prefect_api(webhook_config):
    for api, message in ((None, "PREFECT_API_URL is not set"), (f"http://127.0.0.1:{free_port()}/api", "is not reachable")):
        done = subprocess.run([str(BIN / "flywheel"), "webhook", "serve"], env=_env(webhook_config, api), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.slow
def test_webhook_serve_exits_cleanly_on_sigterm_leaving_no_process_behind(prefect_api, webhook_config, tmp_path):
    data = yaml.safe_load(webhook_config.read_text())
    data["webhook"] = {"port": free_port()}
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "webhook.log"
    process = _start([str(BIN / "flywheel"), "webhook", "serve"], _env(config, prefect_api), log)
    try:
        _wait_healthy(f"http://127.0.0.1:{data['webhook']['port']}/health", process, log)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]  # not 143: the shutdown ran to its end
        with pytest.raises(ProcessLookupError):  # nothing it started is left in its process group
            os.killpg(process.pid, 0)
        assert "Traceback" not in log.read_text()
    finally:
        _stop(process)


@pytest.mark.parametrize("preset, expected", [(None, 120), ("45", 45)])
def test_the_cli_gives_the_ephemeral_prefect_api_time_to_start_on_a_busy_machine(preset, expected):
    """Prefect's default is 20 s; the CLI raises it before Prefect is imported, unless the user set it."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    if preset:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = preset
    script = (
        "import sys, slm_flywheel.app.cli as cli; assert 'prefect' not in sys.modules; cli._offline_defaults(); "
        "from prefect.settings import get_current_settings; print(get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) == expected
