"""`flywheel demo --fast` end to end, as a newcomer runs it (the real base model, tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_fast_demo_detects_drift_promotes_improves_and_rolls_back(tmp_path, real_base_model, data_dir):
    env = {
        **os.environ,
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "FLYWHEEL_BASE_MODEL": real_base_model,  # the session's materialized checkpoint
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
    }
    started = time.perf_counter()
    run = subprocess.run([str(Path(sys.executable).with_name("flywheel")), "demo", "--fast"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    print(f"flywheel demo --fast: {seconds:.0f} s")
    home = tmp_path / "home" / "demo"
    report = json.loads((home / "report.json").read_text())
    assert report["drift_detected"] and not report["launch_drift_detected"], report["drift_reason"]
    # Labels: bought from the SIMULATED teacher, and free from the router's frontier answers.
    assert report["relabeled"] + report["router_labels"] > 0 and "SIMULATED" in report["teacher"]
    assert report["rollback_completed"] is True, report["rollback"]
    assert report["rollback"]["restored_version"] == (report["promoted_version"] or report["champion_version"])
    assert [entry["action"] for entry in report["history"]][-2:] == ["promote", "rollback"]
    assert [phase["phase"] for phase in report["timeline"]] == ["launch", "drift", "after retrain", "bad promotion", "after rollback"]
    low, high = report["live_accuracy_gain_ci95"]  # the stated margin of before -> after
    assert low <= report["live_accuracy_after"] - report["live_accuracy_before"] <= high
    assert report["live_accuracy_after_rollback"] is not None
    # The router is on: the SIMULATED frontier answers what the small model is unsure of, and
    # what callers got during drift is at least as accurate as the small model alone.
    assert report["frontier_share_drift"] > 0 and report["frontier_share_after"] is not None
    assert report["served_accuracy_drift"] >= report["live_accuracy_before"]
    assert set(report["stage_seconds"]) >= {"train launch champion", "nightly-retrain", "rollback-guard"}
    # The cost ledger of the demo's own records: every simulated label a relabel call, the trainings timed.
    costs = report["costs"]["total"]
    assert costs["relabel_calls"] == report["relabeled"] and costs["training_seconds"] > 0
    assert costs["requests"] >= sum(phase["requests"] for phase in report["timeline"])
    assert report["cost_usd"] == pytest.approx(costs["cost_usd"]) and report["frontier_only_cost_usd"] > 0 and report["savings_pct"] is not None
    html = (home / "report.html").read_text()
    assert "data:image/png;base64," in html and "SIMULATED" in html
    assert "mlflow ui" in (home / "report.md").read_text() and "## Costs" in (home / "report.md").read_text()
    assert "rollback completed" in run.stdout.lower()
