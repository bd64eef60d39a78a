"""`flywheel demo`: the flywheel end to end on embedded defaults, with a report a newcomer can read.

Stages: pull the base model; train the launch champion on launch data; start the serving tier and
push the champion; simulate launch traffic, then drifted traffic; run `nightly-retrain` (drift →
simulated teacher → contracts → retrain → gate); promote and push the candidate when the gate
passes; simulate more drifted traffic and score live accuracy before and after.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from flywheel import progress
from flywheel.config import Settings

# Launch / drift traffic and data sizes: the default run fits 15 minutes on 2 CPU cores, `fast`
# is a smoke run for CI (a few minutes).
SIZES = {
    "default": {"launch_examples": 1500, "steady": 300, "drifted": 400, "after": 400, "budget": 300, "golden_fraction": 0.1, "min_window": 200},
    "fast": {"launch_examples": 480, "steady": 120, "drifted": 160, "after": 160, "budget": 80, "golden_fraction": 0.03, "min_window": 100},
}
KEEP = ("models",)  # caches a second run reuses; everything else starts clean


@dataclass
class DemoReport:
    workload: str
    scenario: str
    fast: bool
    teacher: str = ""
    launch_drift_detected: bool = False  # the nightly run on launch traffic: should stay quiet
    drift_detected: bool = False
    drift_reason: str = ""
    champion_version: int | None = None
    candidate_version: int | None = None
    promoted_version: int | None = None
    gate_reasons: list[str] = field(default_factory=list)
    relabeled: int = 0
    teacher_cost: float = 0.0
    live_accuracy_launch: float | None = None
    live_accuracy_before: float | None = None
    live_accuracy_after: float | None = None
    champion_drift_accuracy: float | None = None
    candidate_drift_accuracy: float | None = None
    rollback_completed: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    config["splits"]["golden_fraction"] = sizes["golden_fraction"]
    config["drift"]["min_window"] = sizes["min_window"]
    path = home / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_demo(settings: Settings, workload: str = "banking-intent", scenario: str = "prior-shift", budget: int | None = None, fast: bool = False) -> DemoReport:
    from flows.nightly_retrain import nightly_retrain
    from flows.promote import promote
    from flows.train_adapter import train_adapter_flow
    from flywheel.config import load_settings
    from flywheel.simulate import simulate
    from models.base_model import resolve_base_model
    from serving.app import create_app
    from serving.server import BackgroundServer, build_state, free_port

    sizes = SIZES["fast" if fast else "default"]
    report = DemoReport(workload, scenario, fast)
    config_path = prepare_home(settings, workload, fast, free_port())
    demo = load_settings(config_path)
    with _stage(report, "pull base model"):
        resolve_base_model(demo.base_model, demo.models_dir)
    with _stage(report, "train launch champion"):
        champion = train_adapter_flow(workload=workload, config_path=str(config_path), launch=True)
        report.champion_version = champion.version
    with _stage(report, "start serving tier"):
        state = build_state(demo, "demo-replica")
        server = BackgroundServer(create_app(state), port=demo.serving.port).__enter__()
    try:
        def traffic(name: str, kind: str, count: int, seed: int) -> float:
            result = simulate(demo, workload, kind, count, server.url, concurrency=8, seed=seed, progress=lambda d, t: progress.report(f"traffic: {name}", d, t))
            if result.failed:
                raise RuntimeError(f"{result.failed} simulated requests failed")
            return result.live_accuracy

        with _stage(report, "traffic: launch (steady)"):
            report.live_accuracy_launch = traffic("launch", "steady", sizes["steady"], 1)
        state.writer.flush()  # every captured sample on disk before the nightly run reads them
        with _stage(report, "nightly-retrain on launch traffic"):
            quiet = nightly_retrain(workload=workload, config_path=str(config_path))
            report.launch_drift_detected = quiet.drift_detected
        with _stage(report, f"traffic: drift ({scenario})"):
            report.live_accuracy_before = traffic("drift", scenario, sizes["drifted"], 2)
        state.writer.flush()
        with _stage(report, "nightly-retrain"):
            summary = nightly_retrain(workload=workload, config_path=str(config_path), budget=budget if budget is not None else sizes["budget"])
        report.drift_detected, report.drift_reason = summary.drift_detected, summary.drift_reason
        report.teacher, report.relabeled, report.teacher_cost = summary.teacher, summary.relabeled, summary.teacher_cost
        report.candidate_version, report.gate_reasons = summary.candidate_version, summary.gate_reasons
        report.champion_drift_accuracy, report.candidate_drift_accuracy = summary.champion_drift_accuracy, summary.candidate_drift_accuracy
        if summary.promote and summary.candidate_version is not None:
            with _stage(report, "promote and push"):
                promote(workload=workload, version=summary.candidate_version, reviewer="gate (auto)", reason="; ".join(summary.gate_reasons), config_path=str(config_path))
                report.promoted_version = summary.candidate_version
        with _stage(report, f"traffic: after retrain ({scenario})"):
            report.live_accuracy_after = traffic("after", scenario, sizes["after"], 3)
    finally:
        server.__exit__(None, None, None)
        state.engine.close()
        state.writer.close()
    (demo.home / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report
