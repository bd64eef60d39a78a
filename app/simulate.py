"""The traffic simulator: real HTTP requests built from the dataset's non-golden rows.

Each request's hidden gold answer goes to a separate ground-truth file that the pipeline never
reads (only the simulated teacher and report scorekeeping do). With a router on, the SIMULATED
frontier answers on the request path from the gold written before the requests go
(`request_gold_path`, keyed by each request's `x-request-id`).
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
from slm_flywheel.models.teacher import ground_truth_path, request_gold_path


@dataclass(frozen=True)
class SimulationResult:
    workload: str
    scenario: str
    sent: int
    failed: int
    correct: int  # the answers served, scored against the hidden gold (exact label / exact slot object)
    seconds: float
    truth_path: Path
    slm_correct: int = 0  # the small model's own answers, scored the same way
    frontier_served: int = 0  # answers the router had the frontier give

    @property
    def live_accuracy(self) -> float:
        """Accuracy of what callers got (the frontier's answer where the router used it)."""
        answered = self.sent - self.failed
        return self.correct / answered if answered else 0.0

    @property
    def slm_accuracy(self) -> float:
        """Accuracy of the small model's own answers on the same requests."""
        answered = self.sent - self.failed
        return self.slm_correct / answered if answered else 0.0

    @property
    def frontier_share(self) -> float:
        answered = self.sent - self.failed
        return self.frontier_served / answered if answered else 0.0


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
    client_ids = [f"sim-{scenario}-{run}-{index}" for index in range(len(requests))]
    gold_path = request_gold_path(settings.home)
    gold_path.parent.mkdir(parents=True, exist_ok=True)
    with gold_path.open("a") as handle:  # before any request goes: the SIMULATED frontier reads it
        handle.write("".join(json.dumps({"client_request_id": cid, "gold": r.gold}) + "\n" for cid, r in zip(client_ids, requests)))
    lock = threading.Lock()
    counts = {"failed": 0, "correct": 0, "slm_correct": 0, "frontier": 0, "done": 0}
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
                client_id = client_ids[index]
                request_id = client_id  # replaced by the server's id, the captured sample's key, once answered
                ok = correct = slm_correct = frontier = False
                try:
                    response = client.post(f"/v1/workloads/{workload}/predict", json={"inputs": [request.text]}, headers={"x-request-id": client_id})
                    if response.status_code == 200:
                        ok = True
                        request_id = response.json()["request_id"]
                        prediction = response.json()["predictions"][0]
                        gold = spec.parse_label(request.gold)
                        correct = prediction["answer"] is not None and prediction["answer"] == gold
                        slm_correct = prediction["slm_answer"] is not None and prediction["slm_answer"] == gold
                        frontier = prediction["served_by"] == "frontier"
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["failed"] += not ok
                    counts["correct"] += correct
                    counts["slm_correct"] += slm_correct
                    counts["frontier"] += frontier
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
    return SimulationResult(
        workload, scenario, len(requests), counts["failed"], counts["correct"], time.perf_counter() - started, truth_path,
        counts["slm_correct"], counts["frontier"],
    )
