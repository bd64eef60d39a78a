"""`flywheel serve` as a user starts it (a subprocess): it names the adapters it loaded, and the
replica it serves is where `promote` pushes when the port comes from the configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from slm_flywheel.flows.promote import promote
from slm_flywheel.flows.train_adapter import train_adapter_flow
from slm_flywheel.serving.server import free_port


def test_serve_names_its_adapters_and_promote_reaches_it_on_the_configured_port(tiny_config, tmp_path, monkeypatch):
    assert train_adapter_flow(workload="banking-intent", config_path=str(tiny_config)).version == 1
    port = free_port()
    monkeypatch.setenv("FLYWHEEL_SERVING__PORT", str(port))  # serve and promote both see it
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "serve.log"
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "slm_flywheel.app.cli", "serve", "-c", str(tiny_config)], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert "loaded adapters: banking-intent v1" in log.read_text()
        assert train_adapter_flow(workload="banking-intent", config_path=str(tiny_config), max_examples=16).version == 2
        result = promote(workload="banking-intent", version=2, reviewer="ana", config_path=str(tiny_config))
        assert result.replicas == [f"http://127.0.0.1:{port}"]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/workloads").json()["workloads"]["banking-intent"] == "banking-intent@v2"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"flywheel serve did not stop on SIGTERM:\n{log.read_text()[-2000:]}")
