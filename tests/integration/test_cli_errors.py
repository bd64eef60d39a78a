"""A newcomer's mistakes, each run as the real command (`python -m slm_flywheel.app.cli`, a subprocess):
one line on stderr naming the problem and the fix, exit code 2, no traceback unless `--debug`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CONFIG = str(REPO / "flywheel.yaml")


def _flywheel(*args: str, cwd: Path, home: Path, **env: str | None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "FLYWHEEL_HOME": str(home)}
    for name in ("FLYWHEEL_CONFIG", "PREFECT_API_URL", "FLYWHEEL_TRACKING_URI"):  # each case starts from a newcomer's shell
        environ.pop(name, None)
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run([sys.executable, "-m", "slm_flywheel.app.cli", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=600)


def _one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_a_wrong_data_dir(tmp_path, home):
    _one_line_error(_flywheel("train", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home, FLYWHEEL_DATA_DIR=str(tmp_path / "nope")), "is not a directory", "FLYWHEEL_DATA_DIR")
    _one_line_error(_flywheel("train", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home, FLYWHEEL_DATA_DIR=str(tmp_path)), "has no banking77/ folder", "FLYWHEEL_DATA_DIR")


def test_a_missing_data_dir(tmp_path, home):
    _one_line_error(_flywheel("train", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home, FLYWHEEL_DATA_DIR=None), "data_dir is not set", "FLYWHEEL_DATA_DIR")


def test_no_config_found_says_where_it_looked_and_how_to_point_at_one(tmp_path, home):
    line = _one_line_error(_flywheel("train", "banking-intent", cwd=tmp_path, home=home), "no flywheel.yaml found", "--config", "FLYWHEEL_CONFIG", "flywheel init")
    assert str(tmp_path.resolve() / "flywheel.yaml") in line
    _one_line_error(_flywheel("train", "banking-intent", cwd=tmp_path, home=home, FLYWHEEL_CONFIG=str(tmp_path / "missing.yaml")), "missing.yaml does not exist")


@pytest.mark.parametrize("command", [["nightly", "banking-intent"], ["history", "banking-intent"], ["predict", "banking-intent", "hi"]])
def test_running_before_any_training(command, tmp_path, home):
    _one_line_error(_flywheel(*command, "-c", CONFIG, cwd=tmp_path, home=home), "banking-intent has no champion yet", "flywheel train banking-intent")


def test_an_unknown_workload(tmp_path, home):
    _one_line_error(_flywheel("train", "banking-intnet", "-c", CONFIG, cwd=tmp_path, home=home), "unknown workload 'banking-intnet'", "banking-intent, restaurant-slots")


def test_a_bad_config_value_names_the_field(tmp_path, home):
    override = {"FLYWHEEL_WORKLOADS__banking-intent__TRAINING__LEARNING_RATE": "-1"}
    _one_line_error(_flywheel("train", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home, **override), "workloads.banking-intent.training.learning_rate", "greater than 0")


def test_a_busy_port_fails_before_the_model_loads(tmp_path, home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line_error(_flywheel("serve", "--port", str(port), "-c", CONFIG, cwd=tmp_path, home=home), f"127.0.0.1:{port}", "--port")


def test_a_registry_error(tmp_path, home):
    from mlflow import MlflowClient

    home.mkdir()
    MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_registered_models()  # a registry, empty
    _one_line_error(_flywheel("predict", "banking-intent", "hi", "--version", "9", "-c", CONFIG, cwd=tmp_path, home=home), "banking-intent has no version 9", "flywheel train")


def test_a_prefect_start_up_timeout(tmp_path, home):
    result = _flywheel("train", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Prefect's own log lines (temporary server started / stopped) come and go; the error is one line.
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in error and "prefect server start" in error


def test_an_unreachable_prefect_server(tmp_path, home):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        api = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
    result = _flywheel("train", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home, PREFECT_API_URL=api)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"cannot reach the Prefect API at {api}" in error and "prefect server start" in error


def test_debug_shows_the_traceback(tmp_path, home):
    result = _flywheel("--debug", "history", "banking-intent", "-c", CONFIG, cwd=tmp_path, home=home)
    assert result.returncode != 0 and "Traceback" in result.stderr and "no champion yet" in result.stderr


def test_version_and_config_show(tmp_path, home):
    version = _flywheel("--version", cwd=tmp_path, home=home)
    assert version.returncode == 0 and version.stdout.startswith("slm-flywheel ")
    # The README's override: a hyphenated workload name in a variable that `env` (not `export`) sets.
    override = {"FLYWHEEL_WORKLOADS__banking-intent__TRAINING__MAX_EXAMPLES": "500"}
    shown = _flywheel("config", "show", "-c", CONFIG, cwd=tmp_path, home=home, FLYWHEEL_SERVING__PORT="8123", FLYWHEEL_WEBHOOK__SECRET="hush", **override)
    assert shown.returncode == 0, shown.stderr
    workloads = yaml.safe_load(shown.stdout)["workloads"]
    assert workloads["banking-intent"]["training"]["max_examples"] == 500 and workloads["restaurant-slots"]["task"] == "extraction"
    assert f"# file: {CONFIG}" in shown.stdout
    assert "FLYWHEEL_SERVING__PORT" in shown.stdout and "FLYWHEEL_HOME" in shown.stdout
    assert "http://127.0.0.1:8123" in shown.stdout  # the default replica follows serving.port
    assert "hush" not in shown.stdout
    nothing = _flywheel("config", "show", cwd=tmp_path, home=home)
    assert nothing.returncode == 0 and "does not exist; defaults only" in nothing.stdout

