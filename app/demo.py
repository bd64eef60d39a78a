"""`flywheel demo`: the flywheel end to end on embedded defaults, with a report a newcomer can read.

Stages: pull the base model; train the launch champion on launch data; start the serving tier and
push the champion; simulate launch traffic, then drifted traffic; run `nightly-retrain` (drift →
simulated teacher → contracts → retrain → gate → promote → push); simulate more drifted traffic
and score live accuracy before and after. Then the rollback act: a reviewer overrides the gate and
promotes a bad adapter (trained on shuffled labels); live traffic shows it; `rollback-guard` puts
the previous champion back in the registry and in serving. Last, the cost ledger of the run's
records against frontier-only. Writes report.json, report.md and report.html (with plots) under
the demo's state dir.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from slm_flywheel import progress
from slm_flywheel.app.report import DemoReport, RollbackAct, TrafficPhase, live_gain_ci95, write_reports
from slm_flywheel.config import Settings

# Launch / drift traffic and data sizes: the default run fits 15 minutes on 2 CPU cores, `fast`
# is a smoke run for CI (a few minutes).
SIZES = {
    "default": {"launch_examples": 1500, "steady": 300, "drifted": 400, "after": 400, "budget": 300, "golden_fraction": 0.06, "min_window": 200,
                "bad_examples": 160, "guard_traffic": 160, "after_rollback": 100, "retrain_mode": "replay"},
    # warm start: the retrain continues from the champion on the new labels plus a small replay
    # and a smaller validation split (the drift reference's answers)
    "fast": {"launch_examples": 224, "steady": 80, "drifted": 160, "after": 48, "budget": 80, "golden_fraction": 0.008, "min_window": 80,
             "bad_examples": 48, "guard_traffic": 60, "after_rollback": 32, "retrain_mode": "warm_start", "validation_fraction": 0.02,
             # LoRA on the top 15 layers: training 1.6x faster for a smoke run (the default run adapts
             # every layer, as flywheel.yaml does)
             "lora_layers": 15},
}
TRAFFIC_CONCURRENCY = 16  # clients at once: the serving tier micro-batches them
KEEP = ("models",)  # caches a second run reuses; everything else starts clean


@contextmanager
def _stage(report: DemoReport, name: str) -> Iterator[None]:
    started = time.perf_counter()
    progress.log.info("demo stage: %s", name)
    yield
    report.stage_seconds[name] = round(time.perf_counter() - started, 1)


def prepare_home(settings: Settings, workload: str, fast: bool, port: int) -> Path:
    """A clean demo state dir (caches kept) and the demo's config file in it."""
    home = settings.home.resolve() / "demo"
    home.mkdir(parents=True, exist_ok=True)
    for child in home.iterdir():
        if child.name not in KEEP:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    sizes = SIZES["fast" if fast else "default"]
    data = json.loads(settings.model_dump_json())
    data.update(home=str(home), tracking_uri=None)
    data["serving"].update(port=port, replicas=[f"http://127.0.0.1:{port}"], capture_flush_seconds=0.5)
    config = data["workloads"][workload]
    config["training"]["max_examples"] = sizes["launch_examples"]
    config["training"]["lora_layers"] = sizes.get("lora_layers", config["training"]["lora_layers"])
    config["splits"]["golden_fraction"] = sizes["golden_fraction"]
    config["splits"]["validation_fraction"] = sizes.get("validation_fraction", config["splits"]["validation_fraction"])
    config["drift"]["min_window"] = sizes["min_window"]
    config["relabel"]["retrain_mode"] = sizes["retrain_mode"]
    config["promotion"] = "auto"  # a gate pass is promoted and pushed by nightly-retrain itself
    # The router is on: answers under the version's calibrated threshold go to the (SIMULATED) frontier.
    config["router"]["mode"] = "fallback"
    # The rollback guard judges the bad version on the demo's small traffic volumes; the audit
    # takes up to 60 answers a side (the fast run: all of them), as 30 left a 0.6 -> 0.3 agreement
    # drop short of the guard's alpha of 0.01 on some runs.
    config["guard"].update(min_samples=min(60, sizes["guard_traffic"] // 2), audit_budget=60, min_audited=20)
    # The demo's serving tier runs only while the demo does: it is paid for the hours its traffic spans.
    data["costs"]["serving_hours_per_day"] = None
    path = home / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def shuffled_label_set(settings: Settings, workload: str, count: int, path: Path) -> Path:
    """A deliberately bad training set: real texts, labels shuffled among them (seeded)."""
    import random

    import pandas as pd

    from slm_flywheel.models.context import resolve_workload

    rows = resolve_workload(settings, workload).splits["train"].to_pandas().sample(n=count, random_state=1)
    labels = rows["label"].tolist()
    random.Random(2).shuffle(labels)
    pd.DataFrame({"id": rows["id"].astype(str), "text": rows["text"], "label": labels}).to_parquet(path)
    return path


def run_demo(settings: Settings, workload: str = "banking-intent", scenario: str = "prior-shift", budget: int | None = None, fast: bool = False) -> DemoReport:
    from slm_flywheel.flows.nightly_retrain import nightly_retrain
    from slm_flywheel.flows.promote import promote
    from slm_flywheel.flows.rollback_guard import rollback_guard
    from slm_flywheel.flows.train_adapter import train_adapter_flow
    from slm_flywheel.config import load_settings
    from slm_flywheel.app.simulate import simulate
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.drift import DriftTest
    from slm_flywheel.models.promotion import history
    from slm_flywheel.serving.app import create_app
    from slm_flywheel.serving.server import BackgroundServer, build_state, free_port
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.tasks.costs import compute_ledger

    sizes = SIZES["fast" if fast else "default"]
    report = DemoReport(workload, scenario, fast)
    config_path = prepare_home(settings, workload, fast, free_port())
    # The demo's own config file says where its state lives; an exported FLYWHEEL_HOME or
    # FLYWHEEL_TRACKING_URI (which outrank config files) must not point its flows elsewhere.
    for name in ("FLYWHEEL_HOME", "FLYWHEEL_TRACKING_URI"):
        os.environ.pop(name, None)
    demo = load_settings(config_path)
    report.home = str(demo.home)
    with _stage(report, "pull base model"):
        resolve_base_model(demo.base_model, demo.models_dir)
    with _stage(report, "train launch champion"):
        champion = train_adapter_flow(workload=workload, config_path=str(config_path), launch=True)
        report.champion_version = champion.version
    with _stage(report, "start serving tier"):
        state = build_state(demo, "demo-replica")
        server = BackgroundServer(create_app(state), port=demo.serving.port).__enter__()
    try:
        def traffic(phase: str, kind: str, count: int, seed: int) -> float:
            served = server_route(server.url, workload)
            result = simulate(demo, workload, kind, count, server.url, concurrency=TRAFFIC_CONCURRENCY, seed=seed, progress=lambda d, t: progress.report(f"traffic: {phase}", d, t))
            if result.failed:
                raise RuntimeError(f"{result.failed} simulated requests failed")
            state.writer.flush()  # every captured sample on disk before a flow reads them
            report.timeline.append(TrafficPhase(phase, kind, count, result.slm_accuracy, served, result.live_accuracy, result.frontier_share))
            return result.slm_accuracy

        with _stage(report, "traffic: launch (steady)"):
            report.live_accuracy_launch = traffic("launch", "steady", sizes["steady"], 1)
        with _stage(report, "nightly-retrain on launch traffic"):
            quiet = nightly_retrain(workload=workload, config_path=str(config_path))
            report.launch_drift_detected = quiet.drift_detected
            report.drift_tests["launch"] = [DriftTest(**test) for test in quiet.drift_tests]
        with _stage(report, f"traffic: drift ({scenario})"):
            report.live_accuracy_before = traffic("drift", scenario, sizes["drifted"], 2)
        with _stage(report, "nightly-retrain"):
            summary = nightly_retrain(workload=workload, config_path=str(config_path), budget=budget if budget is not None else sizes["budget"])
        report.drift_detected, report.drift_reason, report.drift_tests["drifted"] = summary.drift_detected, summary.drift_reason, [DriftTest(**test) for test in summary.drift_tests]
        report.teacher, report.relabeled, report.teacher_cost = summary.teacher, summary.relabeled, summary.teacher_cost
        report.teacher_cached, report.to_review = summary.teacher_cached, summary.to_review
        report.router_labels = summary.router_labels
        report.candidate_version, report.gate_reasons, report.gate_metrics = summary.candidate_version, summary.gate_reasons, summary.gate_metrics
        report.champion_drift_accuracy, report.candidate_drift_accuracy = summary.champion_drift_accuracy, summary.candidate_drift_accuracy
        report.promoted_version = summary.promoted_version
        with _stage(report, f"traffic: after retrain ({scenario})"):
            report.live_accuracy_after = traffic("after retrain", scenario, sizes["after"], 3)
        # The rollback act: a reviewer overrides the gate; the guard catches it.
        with _stage(report, "train a bad adapter (shuffled labels)"):
            bad_set = shuffled_label_set(demo, workload, sizes["bad_examples"], demo.home / "shuffled-labels.parquet")
            bad = train_adapter_flow(workload=workload, config_path=str(config_path), training_set_path=str(bad_set))
        good_version = summary.promoted_version or champion.version
        with _stage(report, "reviewer override: promote the bad adapter"):
            promote(workload=workload, version=bad.version, reviewer="demo reviewer (override)", reason="override: promoted without a gate pass", config_path=str(config_path))
        with _stage(report, f"traffic: bad promotion ({scenario})"):
            report.live_accuracy_rollback = traffic("bad promotion", scenario, sizes["guard_traffic"], 4)
        with _stage(report, "rollback-guard"):
            verdict = rollback_guard(config_path=str(config_path), workloads=[workload])[workload]
        champion_now = mlflow_client(demo).get_model_version_by_alias(workload, "champion")
        report.rollback_completed = verdict.trip and int(champion_now.version) == good_version and server_route(server.url, workload) == f"{workload}@v{good_version}"
        report.rollback = RollbackAct(bad.version, int(champion_now.version), verdict.reasons, report.rollback_completed)
        with _stage(report, f"traffic: after rollback ({scenario})"):
            report.live_accuracy_after_rollback = traffic("after rollback", scenario, sizes["after_rollback"], 5)
    finally:
        server.__exit__(None, None, None)
        state.engine.close()
        state.writer.close()
    report.history = history(mlflow_client(demo), workload)
    with _stage(report, "cost ledger"):
        ledger = compute_ledger(resolve_workload(demo, workload), mlflow_client(demo))
    report.costs = ledger
    report.cost_usd, report.frontier_only_cost_usd, report.savings_pct = ledger.total.cost_usd, ledger.total.frontier_only_usd, ledger.total.savings_pct
    phases = {phase.phase: phase for phase in report.timeline}
    if "drift" in phases:
        report.frontier_share_drift, report.served_accuracy_drift = phases["drift"].frontier_share, phases["drift"].served_accuracy
    if "after retrain" in phases:
        report.frontier_share_after = phases["after retrain"].frontier_share
    interval = live_gain_ci95(report)
    report.live_accuracy_gain_ci95 = [round(bound, 4) for bound in interval] if interval else None
    (demo.home / "report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
    write_reports(report, demo.home)
    return report


def server_route(url: str, workload: str) -> str | None:
    import httpx

    return httpx.get(f"{url}/v1/workloads").json()["workloads"].get(workload)
