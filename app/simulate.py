"""The traffic simulator: real HTTP requests built from the dataset's non-golden rows.

Each request's hidden gold answer goes to a separate ground-truth file that the pipeline never
reads (only the simulated teacher and report scorekeeping do).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from slm_flywheel.config import Settings
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.scenarios import launch_plan, scenario_requests
from slm_flywheel.models.teacher import ground_truth_path


@dataclass(frozen=True)
class SimulationResult:
    workload: str
    scenario: str
    sent: int
    failed: int
    correct: int  # scored against the hidden gold answers (exact label / exact slot object)
    seconds: float
    truth_path: Path

    @property
    def live_accuracy(self) -> float:
        answered = self.sent - self.failed
        return self.correct / answered if answered else 0.0


def simulate(
    settings: Settings,
    workload: str,
    scenario: str,
    count: int,
    url: str,
    *,
    truth_path: Path | None = None,
    concurrency: int = 4,
    seed: int = 0,
    progress: object = None,
) -> SimulationResult:
    """Send `count` requests of `scenario` to `url`, one input each, `concurrency` at a time."""
    import httpx
    from datasets import concatenate_datasets

    context = resolve_workload(settings, workload)
    config, spec, splits = context.config, context.spec, context.splits
    pool = concatenate_datasets([splits["train"], splits["validation"]])  # never golden
    plan = launch_plan(spec.task, spec.labels, config.launch)
    requests = scenario_requests(pool, plan, scenario, count, seed)
    truth_path = truth_path or ground_truth_path(settings.home)
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    lock = threading.Lock()
    counts = {"failed": 0, "correct": 0, "done": 0}
    truth_rows: list[str] = []
    cursor = iter(enumerate(requests))
    started = time.perf_counter()

    def worker() -> None:
        with httpx.Client(base_url=url.rstrip("/"), timeout=120) as client:
            while True:
                with lock:
                    item = next(cursor, None)
                if item is None:
                    return
                index, request = item
                client_id = f"sim-{scenario}-{run}-{index}"
                request_id = client_id  # replaced by the server's id, the captured sample's key, once answered
                ok, correct = False, False
                try:
                    response = client.post(f"/v1/workloads/{workload}/predict", json={"inputs": [request.text]}, headers={"x-request-id": client_id})
                    if response.status_code == 200:
                        ok = True
                        request_id = response.json()["request_id"]
                        answer = response.json()["predictions"][0]["answer"]
                        correct = answer is not None and answer == spec.parse_label(request.gold)
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["failed"] += not ok
                    counts["correct"] += correct
                    counts["done"] += 1
                    truth_rows.append(json.dumps({"request_id": request_id, "client_request_id": client_id, "workload": workload, "scenario": scenario, "gold": request.gold, "source_id": request.source_id}))
                    if progress is not None:
                        progress(counts["done"], len(requests))  # type: ignore[operator]

    threads = [threading.Thread(target=worker) for _ in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with truth_path.open("a") as handle:
        handle.write("\n".join(truth_rows) + "\n")
    return SimulationResult(workload, scenario, len(requests), counts["failed"], counts["correct"], time.perf_counter() - started, truth_path)
