"""The router: the small model answers what it is sure of, the frontier answers the long tail.

Per workload, `router.mode` (flywheel/config.py `RouterConfig`):

* `off`: the small model answers everything.
* `fallback`: an input whose calibrated confidence is under the served version's threshold is
  sent to the frontier (the workload's teacher: any OpenAI-compatible endpoint, or the SIMULATED
  one), all of a request's such inputs in one call, with bounded concurrency, a per-request
  timeout, a rate limit, a daily spend cap and a circuit breaker. When the frontier cannot answer
  (an error, the timeout, the cap, the breaker, the rate limit, an answer outside the schema)
  the small model's answer is served and flagged `slm-frontier-unavailable`: the frontier never
  turns a request into an error.
* `shadow`: the small model answers everything; the route it would have taken is recorded.

In both, `router.audit_share` of the inputs the small model answers are also asked of the frontier
off the request path (the caller has its answer first), for an honest wrong-path estimate.

With `router.live_threshold`, the frontier's answers (to routed inputs, and the audits) are also
labels: when they show what callers get falling under the target (traffic that has moved away
from the validation split the threshold was fitted on), the version's threshold is raised
(`models/calibration.py` `LiveThreshold`, per version; never lowered).

The calibration (calibrator and threshold, `calibration.json`) travels with the adapter, and the
version that answered an input decides its route, so a hot swap or a rollback switches both at
once. A version without a calibration routes nothing (reason `uncalibrated`).

No Prefect here: the serving tier runs without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

from slm_flywheel.config import RouterConfig
from slm_flywheel.models.calibration import Calibration, LiveThreshold, keeps, load_calibration
from slm_flywheel.models.router_stats import FRONTIER, SLM, UNAVAILABLE, wrong_path_rate
from slm_flywheel.models.teacher import Teacher, TeacherItem, TeacherRun
from slm_flywheel.models.workload import Answer, TaskSpec

ServedBy = Literal["slm", "frontier", "slm-frontier-unavailable"]


@dataclass(frozen=True)
class Routed:
    """One input's answer after routing, and how it got there (all of it is captured).

    `reason`: confident, low_confidence (answered by the frontier), uncalibrated, off, shadow:<the
    route it would have taken>, or why the frontier could not answer (timeout, error: ...,
    over_budget, breaker_open, rate_limited, invalid_answer).
    """

    served_by: ServedBy
    answer: Answer | None
    valid: bool
    calibrated_confidence: float | None
    slm_answer: Answer | None
    reason: str
    frontier_latency_ms: float | None = None
    frontier_tokens: int = 0
    frontier_cost_usd: float = 0.0


class CircuitBreaker:
    """Opens after `failures` consecutive failed calls; after `cooldown_s` lets one trial call
    through (half open): a success closes it, a failure opens it again."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if self.clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Whether a call may go now (in half open, only one until it reports)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self.clock() - self._opened_at < self.cooldown_s or self._trial:
                return False
            self._trial = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._consecutive, self._opened_at, self._trial = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._trial or self._consecutive >= self.failures:
                self._opened_at, self._trial = self.clock(), False

    def release(self) -> None:
        """A half-open trial that never called (rate limit, cap): the next request may try instead."""
        with self._lock:
            self._trial = False


class DailySpend:
    """The router's frontier spend per UTC day under a cap: a call reserves its worst case first
    and settles at what it cost, so calls in flight together can never pass the cap."""

    def __init__(self, cap_usd: float, today: Callable[[], date] = lambda: datetime.now(timezone.utc).date()):
        self.cap_usd, self.today = cap_usd, today
        self._day = today()
        self._spent = self._reserved = 0.0
        self._lock = threading.Lock()

    def _roll(self) -> None:
        if (day := self.today()) != self._day:
            self._day, self._spent = day, 0.0

    @property
    def spent_usd(self) -> float:
        with self._lock:
            self._roll()
            return self._spent

    def reserve(self, worst_usd: float) -> bool:
        with self._lock:
            self._roll()
            if self._spent + self._reserved + worst_usd > self.cap_usd:
                return False
            self._reserved += worst_usd
            return True

    def settle(self, reserved_usd: float, cost_usd: float) -> None:
        with self._lock:
            self._roll()
            self._reserved = max(0.0, self._reserved - reserved_usd)
            self._spent += cost_usd


class RateLimit:
    """A token bucket: `rate` calls per second, bursts of up to one second's worth. Never waits:
    a request over the rate is served by the small model (a wait would add latency to it)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.clock = rate, clock
        self.capacity = max(1.0, rate)
        self._tokens, self._at = self.capacity, clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


@dataclass
class RouterStats:
    """Counts since start, for /metrics."""

    routed: dict[str, int]  # served_by -> inputs
    slm_confidence_sum: float = 0.0  # calibrated confidences of the answers the small model served
    slm_calibrated: int = 0
    audited: int = 0  # small-model answers the frontier also answered
    audited_wrong: int = 0  # ... where the two differ: the small model was sure and (likely) wrong
    threshold: float | None = None  # in force for the last routed request (the version's, or raised by live labels)

    @property
    def frontier_share(self) -> float | None:
        total = sum(self.routed.values())
        return self.routed[FRONTIER] / total if total else None

    @property
    def label_free_accuracy(self) -> float | None:
        """Live accuracy of the small model's served answers, estimated without a label: the mean
        calibrated confidence (calibration makes it the expected share right)."""
        return self.slm_confidence_sum / self.slm_calibrated if self.slm_calibrated else None

    def wrong_path(self) -> tuple[float, float, float] | None:
        """The audited wrong-path rate and its 95% (Wilson) interval."""
        return wrong_path_rate(self.audited_wrong, self.audited)


class Router:
    """One workload's router (see the module docstring)."""

    def __init__(
        self,
        spec: TaskSpec,
        config: RouterConfig,
        frontier: Teacher | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = lambda: datetime.now(timezone.utc).date(),
    ):
        if config.mode != "off" and frontier is None:
            raise ValueError(f"workload {spec.name!r}: router.mode {config.mode} needs a frontier (the workload's teacher)")
        self.spec, self.config, self.frontier = spec, config, frontier
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s, clock)
        self.spend = DailySpend(config.daily_spend_usd, today)
        self.rate = RateLimit(config.requests_per_second, clock)
        self.stats = RouterStats(routed={SLM: 0, FRONTIER: 0, UNAVAILABLE: 0})
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._calibrations: dict[Path, Calibration | None] = {}
        self._live: dict[int, tuple[Calibration, LiveThreshold]] = {}  # by calibration (one per version folder)
        if config.mode != "off" and config.live_threshold:
            # The live re-fit's scikit-learn, imported now (about a second) rather than on the
            # event loop at the first re-fit, where it would hold every request that long.
            import sklearn.linear_model  # noqa: F401

    def calibration(self, adapter_dir: Path | None) -> Calibration | None:
        """The calibration stored with an adapter (read once per adapter folder)."""
        if adapter_dir is None:
            return None
        if adapter_dir not in self._calibrations:
            self._calibrations[adapter_dir] = load_calibration(adapter_dir)
        return self._calibrations[adapter_dir]

    def live(self, calibration: Calibration | None) -> LiveThreshold | None:
        """The live threshold of a version's calibration (None: `live_threshold` off, or no calibration)."""
        if calibration is None or not self.config.live_threshold:
            return None
        held = self._live.get(id(calibration))
        if held is None or held[0] is not calibration:
            held = self._live[id(calibration)] = (calibration, LiveThreshold(
                calibration.target_accuracy, self.config.frontier_accuracy, audit_share=self.config.audit_share,
                window=self.config.live_window, min_labels=self.config.live_min_labels,
            ))
        return held[1]

    async def route(
        self, texts: list[str], answers: list[tuple[Answer | None, bool, float]], calibration: Calibration | None, ids: list[str] | None = None
    ) -> list[Routed]:
        """Route one request's inputs; `answers` are the small model's (answer, valid, confidence);
        `ids` name the inputs to the frontier (the caller's request ids; the SIMULATED frontier
        looks its gold up by them)."""
        ids = ids or [str(i) for i in range(len(texts))]
        calibrated: list[float | None] = [None] * len(texts)
        if calibration is not None:
            confidences, kept = [confidence for _, _, confidence in answers], [answer if valid else None for answer, valid, _ in answers]
            calibrated = [float(c) for c in calibration.calibrator.apply(confidences, kept)]
        reason = "off" if self.config.mode == "off" else "uncalibrated" if calibration is None else "confident"
        routed = [Routed(SLM, answer, valid, confidence, answer, reason) for (answer, valid, _), confidence in zip(answers, calibrated)]
        if self.config.mode == "off" or calibration is None:
            return self._count(routed)
        live = self.live(calibration)
        if live is not None:
            for item in routed:
                if item.valid:
                    live.observe(item.calibrated_confidence or 0.0)
        threshold = self.stats.threshold = calibration.threshold if live is None else live.threshold(calibration.threshold)
        # An invalid answer (the constraint could not finish it) always counts as unsure.
        low = [i for i, item in enumerate(routed) if not item.valid or not keeps(threshold, item.calibrated_confidence or 0.0)]
        if self.config.mode == "shadow":
            return self._count([replace(r, reason=f"shadow:{FRONTIER if i in low else SLM}") for i, r in enumerate(routed)])
        if low:
            for index, result in zip(low, await self._ask([texts[i] for i in low], [routed[i] for i in low], [ids[i] for i in low])):
                if live is not None and result.served_by == FRONTIER and routed[index].valid:
                    live.label(routed[index].calibrated_confidence or 0.0, result.answer == routed[index].answer)
                routed[index] = result
        return self._count(routed)

    def _count(self, routed: list[Routed]) -> list[Routed]:
        for item in routed:
            self.stats.routed[item.served_by] += 1
            if item.served_by == SLM and item.calibrated_confidence is not None:
                self.stats.slm_confidence_sum += item.calibrated_confidence
                self.stats.slm_calibrated += 1
        return routed

    def audited(self, ids: list[str], routed: list[Routed]) -> list[int]:
        """The inputs answered by the small model that the frontier is also asked about, off the
        request path: `audit_share` of them, chosen by a hash of the id (the same id, the same choice)."""
        if self.frontier is None or self.config.audit_share <= 0:
            return []
        share = self.config.audit_share
        return [i for i, (item_id, item) in enumerate(zip(ids, routed)) if item.served_by == SLM and item.valid and _unit(item_id) < share]

    async def audit(self, texts: list[str], ids: list[str]) -> list[Answer | None]:
        """The frontier's answers for audited inputs (None where it could not answer: the audit is
        best effort, under the same cap and breaker, and never touches the caller's answer)."""
        placeholder = [Routed(SLM, None, False, None, None, "audit") for _ in texts]
        results = await self._ask(texts, placeholder, ids)
        return [result.answer if result.served_by == FRONTIER else None for result in results]

    def record_audit(
        self, slm_answers: list[Answer | None], audit_answers: list[Answer | None], calibration: Calibration | None = None,
        confidences: list[float | None] | None = None,
    ) -> None:
        """Count the audits that came back: where the frontier disagrees, the small model took the wrong path.

        With the version's `calibration` and the answers' calibrated `confidences`, each is also a
        label for its live threshold (`LiveThreshold.label`, audited)."""
        live = self.live(calibration)
        for index, (slm, audit) in enumerate(zip(slm_answers, audit_answers)):
            if audit is not None:
                self.stats.audited += 1
                self.stats.audited_wrong += slm != audit
                if live is not None and confidences is not None and confidences[index] is not None:
                    live.label(confidences[index], slm == audit, audited=True)

    async def _ask(self, texts: list[str], slm: list[Routed], ids: list[str]) -> list[Routed]:
        """The frontier's answers for these inputs, or the small model's, flagged with why not."""
        assert self.frontier is not None
        if not self.breaker.allow():
            return [_unavailable(r, "breaker_open") for r in slm]
        if not self.rate.take():
            self.breaker.release()
            return [_unavailable(r, "rate_limited") for r in slm]
        items = [TeacherItem(item_id, text) for item_id, text in zip(ids, texts)]
        worst = _worst_case_usd(self.frontier, items)
        if not self.spend.reserve(worst):
            self.breaker.release()
            return [_unavailable(r, "over_budget") for r in slm]
        started = time.perf_counter()
        async with self._slots:
            call = asyncio.get_running_loop().run_in_executor(None, self.frontier.label, items)
            try:
                run: TeacherRun = await asyncio.wait_for(asyncio.shield(call), timeout=self.config.timeout_s)
            except asyncio.TimeoutError:
                # The call goes on in its thread; what it costs is settled when it returns.
                call.add_done_callback(lambda done: self.spend.settle(worst, _cost(done)))
                return self._failed(slm, "timeout", started)
            except Exception as error:  # the frontier never turns a request into an error
                self.spend.settle(worst, 0.0)
                return self._failed(slm, f"error: {error}"[:200], started)
        self.spend.settle(worst, run.cost_usd)
        latency_ms = (time.perf_counter() - started) * 1000
        if any(label.failed for label in run.labels):
            self.breaker.failed()
        else:
            self.breaker.succeeded()
        tokens = (run.prompt_tokens + run.completion_tokens) // max(1, len(items))
        results = []
        for label, slm_answer in zip(run.labels, slm):
            if label.valid and label.label is not None:
                results.append(Routed(FRONTIER, self.spec.parse_label(label.label), True, slm_answer.calibrated_confidence, slm_answer.answer, "low_confidence", latency_ms, tokens, label.cost_usd))
            else:
                reason = "invalid_answer" if label.reason == "out_of_schema" else label.reason
                results.append(replace(_unavailable(slm_answer, reason), frontier_latency_ms=latency_ms, frontier_cost_usd=label.cost_usd))
        return results

    def _failed(self, slm: list[Routed], reason: str, started: float) -> list[Routed]:
        self.breaker.failed()
        latency_ms = (time.perf_counter() - started) * 1000
        return [replace(_unavailable(r, reason), frontier_latency_ms=latency_ms) for r in slm]


def _unavailable(slm: Routed, reason: str) -> Routed:
    return replace(slm, served_by=UNAVAILABLE, reason=reason)


def _worst_case_usd(frontier: Teacher, items: list[TeacherItem]) -> float:
    """What a `label` run over `items` can cost at most: each of its calls (`batch_size` items)
    at its worst, twice (answers outside the schema are asked once more)."""
    size = getattr(frontier, "batch_size", len(items)) or len(items)
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    return 2 * sum(frontier.worst_case_cost_usd(chunk) for chunk in chunks)


def _unit(item_id: str) -> float:
    """A stable number in [0, 1) for an id."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:12], 16) / 16**12


def _cost(done: Any) -> float:
    try:
        return float(done.result().cost_usd)
    except Exception:
        return 0.0
