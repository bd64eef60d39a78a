"""Serving faults against real components on loopback: the sample store vanishing under a live
server, the store and its spill both failing, SIGTERM and SIGINT to `flywheel serve` under load,
a bad request in a good request's micro-batch, and an admin API bound beyond loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from datasets import Dataset
from typer.testing import CliRunner

from slm_flywheel.config import ConfigError, Settings, TrainingConfig, load_settings
from slm_flywheel.serving.app import ServerState, create_app
from slm_flywheel.serving.capture import Sample, SampleWriter, read_samples
from slm_flywheel.serving.server import BackgroundServer, build_state, check_admin_exposure, free_port, is_loopback
from tests.conftest import REPO

pytestmark = pytest.mark.slow
WORKLOAD = "banking-intent"
ADAPTER = f"{WORKLOAD}@v1"
TOKEN = {"Authorization": "Bearer s3cret"}
BIN = Path(sys.executable).parent


def _config(home: Path, tiny_model_dir: Path, data_dir: Path, adapters: Path, **serving: object) -> Path:
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(home), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    data["serving"] = {"admin_token": "s3cret", "adapter_roots": [str(adapters)], "max_batch": 16, **serving}
    home.mkdir(parents=True, exist_ok=True)
    path = home / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    """One LoRA adapter on the tiny model, trained once for the module."""
    from slm_flywheel.models.training import train_lora
    from slm_flywheel.models.workload import build_task_spec

    folder = tmp_path_factory.mktemp("adapters")
    settings = load_settings(_config(folder / "home", tiny_model_dir, data_dir, folder))
    spec = build_task_spec(WORKLOAD, settings.workload(WORKLOAD), data_dir)
    rng = random.Random(1)
    data = Dataset.from_dict({"id": list(range(16)), "text": [f"where is my card {i}" for i in range(16)], "label": [rng.choice(spec.labels) for _ in range(16)]})
    out = folder / "b1"
    train_lora(spec, str(tiny_model_dir), data, out, TrainingConfig(max_examples=16, batch_size=8, lora_r=4, lora_alpha=8, bf16=False, seed=1))
    return out


@pytest.fixture
def settings(tmp_path, tiny_model_dir, data_dir, adapter_dir) -> Settings:
    """Settings on the tiny model whose capture flushes only when a test asks (or at close)."""
    return load_settings(_config(tmp_path / "home", tiny_model_dir, data_dir, adapter_dir.parent, capture_flush_records=10_000, capture_flush_seconds=600))


def _serve(settings: Settings, adapter_dir: Path) -> tuple[ServerState, BackgroundServer]:
    """A server state serving the adapter, and an in-process server on loopback over it."""
    state = build_state(settings, "replica-f", load_champions=False, bf16=False)
    state.engine.load_adapter(ADAPTER, adapter_dir).result()
    return state, BackgroundServer(create_app(state))


def _predict(client: httpx.Client, text: str) -> httpx.Response:
    return client.post(f"/v1/workloads/{WORKLOAD}/predict", json={"inputs": [text]})


def test_a_vanished_store_spills_and_every_row_reaches_the_store_after_it_returns(settings, adapter_dir, fault_table):
    # The workload's folder is a mount (here a symlink) whose target can vanish and come back.
    disk = settings.home / "disk"
    disk.mkdir(parents=True)
    settings.samples_dir.mkdir(parents=True)
    (settings.samples_dir / f"workload={WORKLOAD}").symlink_to(disk)
    state, server = _serve(settings, adapter_dir)
    answered: list[str] = []
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        def burst(n: int) -> None:
            for i in range(n):
                response = _predict(client, f"my card {i} has not arrived")
                assert response.status_code == 200, response.text
                answered.append(response.json()["request_id"])

        burst(5)
        assert state.writer.flush(30)
        disk.rename(settings.home / "disk-gone")  # the mount vanishes
        burst(10)
        assert state.writer.flush(30)
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["capture"]["spilled"] == 10 and health["capture"]["dropped"] == 0
        assert "FileExistsError" in health["capture"]["last_error"]
        metrics = client.get("/metrics").text
        assert "flywheel_capture_spilled 10.0" in metrics and "flywheel_capture_write_failures 3.0" in metrics
        (settings.home / "disk-gone").rename(disk)  # ... and comes back
        burst(5)
        assert state.writer.flush(30)
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["capture"]["recovered"] == 10 and health["capture"]["written"] == 20
    state.engine.close()
    assert state.writer.close(30)
    captured = set(read_samples(settings.samples_dir, WORKLOAD)["request_id"])
    assert list(state.writer.spill_dir.iterdir()) == []
    assert set(answered) <= captured
    fault_table.record("store vanishes mid-traffic, comes back", sent=20, answered=len(answered), captured=len(captured & set(answered)), lost=len(set(answered) - captured))


def _sample(i: int) -> Sample:
    return Sample(datetime.now(timezone.utc), f"r{i}", WORKLOAD, f"text {i}", "card_arrival", True, 0.9, ADAPTER, 5.0, "replica-w")


def test_store_and_spill_both_failing_hold_rows_and_a_restart_recovers_them(tmp_path, fault_table):
    disk, spill_disk = tmp_path / "disk", tmp_path / "spill-disk"
    disk.mkdir()
    root = tmp_path / "samples"
    root.mkdir()
    (root / f"workload={WORKLOAD}").symlink_to(disk)
    spill = tmp_path / "spill"
    spill.symlink_to(spill_disk)  # dangling: the spill's disk is gone too
    disk.rename(tmp_path / "disk-gone")
    writer = SampleWriter(root, "replica-w", flush_records=10_000, flush_seconds=600, spill_dir=spill, retry_backoff_s=0.01)
    for i in range(10):
        assert writer.append(_sample(i))
    assert writer.flush(30)
    stats = writer.stats()
    assert (stats.written, stats.spilled, stats.retained, stats.dropped) == (0, 0, 10, 0) and not stats.healthy
    spill_disk.mkdir()  # the spill's disk returns; the store's does not
    assert writer.append(_sample(10))
    assert writer.flush(30)
    assert (writer.stats().spilled, writer.stats().retained) == (11, 0)
    assert writer.close(30)  # bounded, with the store still gone: the rows wait in the spill
    assert len([line for path in spill.glob("*.jsonl") for line in path.read_text().splitlines()]) == 11

    (tmp_path / "disk-gone").rename(disk)
    restarted = SampleWriter(root, "replica-w", flush_records=10_000, flush_seconds=600, spill_dir=spill)
    assert restarted.close(30)  # it moved the previous run's spill into the store at start
    frame = read_samples(root, WORKLOAD)
    assert sorted(frame["request_id"]) == sorted(f"r{i}" for i in range(11)) and list(spill.glob("*.jsonl")) == []
    fault_table.record("store and spill fail, writer restarts", sent=11, answered=11, captured=len(frame), lost=11 - len(frame))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_flywheel_serve_under_load_captures_every_answered_request(signum, tmp_path, tiny_model_dir, data_dir, adapter_dir, fault_table):
    port = free_port()
    # Nothing is flushed by count or time before the signal: what is captured, the shutdown wrote.
    config = _config(tmp_path / "home", tiny_model_dir, data_dir, adapter_dir.parent, port=port, capture_flush_records=10_000, capture_flush_seconds=600)
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLYWHEEL_DATA_DIR": str(data_dir)}
    with log.open("w") as handle:
        process = subprocess.Popen([str(BIN / "flywheel"), "serve", "--config", str(config), "--replica-id", "replica-s"], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"flywheel serve did not come up:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": ADAPTER, "lora_path": str(adapter_dir)}, headers=TOKEN, timeout=60)
        assert loaded.status_code == 200, loaded.text

        answered: list[str] = []
        other: list[tuple[int, str]] = []
        sent = [0]
        lock = threading.Lock()
        enough = threading.Event()

        def traffic(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                for i in range(10_000):
                    with lock:
                        sent[0] += 1
                    try:
                        response = _predict(client, f"worker {worker} card {i} is lost")
                    except httpx.HTTPError:
                        return  # the server has stopped taking requests
                    with lock:
                        if response.status_code == 200:
                            answered.append(response.json()["request_id"])
                        else:
                            other.append((response.status_code, response.text))
                        if len(answered) >= 20:
                            enough.set()

        threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        assert enough.wait(120), log.read_text()[-3000:]
        process.send_signal(signum)  # mid-traffic: requests are in flight
        assert process.wait(120) == 0, log.read_text()[-3000:]
        for thread in threads:
            thread.join(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert other == []
    captured = set(read_samples(load_settings(config).samples_dir, WORKLOAD)["request_id"])
    assert set(answered) <= captured, f"{len(set(answered) - captured)} answered requests were not captured"
    fault_table.record(f"{signal.Signals(signum).name} to flywheel serve under load", sent=sent[0], answered=len(answered), captured=len(captured & set(answered)), lost=len(set(answered) - captured))


def test_a_bad_request_fails_alone_and_its_batch_mates_are_answered(settings, adapter_dir, fault_table):
    state, server = _serve(settings, adapter_dir)
    engine = state.engine
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        # In one micro-batch (the engine is held until all are queued): a text the tokenizer
        # cannot encode, past HTTP validation, between good ones.
        gate = threading.Event()
        held = engine._call(gate.wait)
        futures = [engine.predict(WORKLOAD, [text]) for text in ("my card is lost", "bad \ud800 text", "where is my refund")]
        gate.set()
        held.result(30)
        assert [item.adapter for item in futures[0].result(60)] == [ADAPTER]
        assert [item.adapter for item in futures[2].result(60)] == [ADAPTER]
        with pytest.raises(TypeError, match="TextEncodeInput"):  # what the tokenizer says to "\ud800"
            futures[1].result(60)

        # Over HTTP, concurrently: the bad ones are 400s naming the problem, the good ones 200s.
        results: list[tuple[str, int, dict]] = []

        def send(kind: str, text: str) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                raw = json.dumps({"inputs": [text]}).encode()  # keeps "\ud800" as the JSON escape
                response = c.post(f"/v1/workloads/{WORKLOAD}/predict", content=raw, headers={"content-type": "application/json"})
                results.append((kind, response.status_code, response.json()))

        jobs = [("good", f"my card {i} never came") for i in range(8)] + [("bad", "hello \ud800") for _ in range(4)]
        random.Random(0).shuffle(jobs)
        threads = [threading.Thread(target=send, args=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        good = [body for kind, status, body in results if kind == "good" and status == 200]
        bad = [(status, body) for kind, status, body in results if kind == "bad"]
        assert len(good) == 8 and len(results) == 12
        assert all(status == 400 and "lone surrogate (U+D800)" in body["error"]["message"] for status, body in bad)
        assert client.get("/health").json()["status"] == "ok"
    state.engine.close()
    assert state.writer.close(30)
    captured = set(read_samples(settings.samples_dir, WORKLOAD)["request_id"])
    ids = {body["request_id"] for body in good}
    assert ids <= captured
    fault_table.record("bad request shares a batch with good ones", sent=12, answered=len(good), captured=len(ids & captured), lost=len(ids - captured))


def test_an_admin_api_beyond_loopback_needs_a_token_or_an_explicit_override(tmp_path, tiny_model_dir, data_dir, caplog):
    from slm_flywheel.app.cli import app

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    config = _config(tmp_path / "home", tiny_model_dir, data_dir, tmp_path, admin_token=None)
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--config", str(config)])
    assert refused.exit_code == 2 and "refusing to serve on 0.0.0.0" in refused.output and "--allow-open-admin" in refused.output
    with pytest.raises(ConfigError, match="serving.admin_token"):
        check_admin_exposure("0.0.0.0", None)
    check_admin_exposure("0.0.0.0", "s3cret")  # a token: allowed
    check_admin_exposure("127.0.0.1", None)  # loopback: allowed
    with caplog.at_level("WARNING", logger="flywheel.serving"):
        check_admin_exposure("0.0.0.0", None, allow_open_admin=True)
    assert "OPEN admin API" in caplog.text
