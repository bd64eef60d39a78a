"""The router's parts (breaker, spend cap, rate limit) on a hand-driven clock, and its decisions
with the SIMULATED frontier answering from known gold."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from slm_flywheel.config import RouterConfig
from slm_flywheel.models.calibration import Calibration, Calibrator
from slm_flywheel.models.teacher import SimulatedTeacher
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.serving.router import FRONTIER, SLM, UNAVAILABLE, CircuitBreaker, DailySpend, RateLimit, Router

SPEC = TaskSpec("banking-intent", "classification", "{text}", labels=("card_arrival", "exchange_rate", "pin_blocked"))
# Identity calibrator: the calibrated confidence is the model's own; the small model keeps >= 0.6.
CALIBRATION = Calibration(Calibrator("temperature", 1.0), 0.9, 0.6, 0.5, 0.92, 0.1, 0.03, 100)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_a_trial_closes_it():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        breaker.failed()
    breaker.succeeded()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 10
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failed()  # the trial failed: open again, for a whole cooldown
    assert breaker.state == "open"
    clock.now = 20
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_spend_reserves_the_worst_case_and_resets_each_day():
    day = [date(2026, 12, 1)]
    spend = DailySpend(1.0, today=lambda: day[0])
    assert spend.reserve(0.6)
    assert not spend.reserve(0.5)  # 0.6 reserved + 0.5 would pass the cap
    spend.settle(0.6, 0.2)  # it cost less than its worst case
    assert spend.spent_usd == pytest.approx(0.2) and spend.reserve(0.5)
    spend.settle(0.5, 0.5)
    assert not spend.reserve(0.31)
    day[0] = date(2026, 12, 2)
    assert spend.spent_usd == 0 and spend.reserve(0.9)


def test_the_rate_limit_refuses_past_its_rate_and_refills_with_time():
    clock = Clock()
    limit = RateLimit(2.0, clock=clock)
    assert limit.take() and limit.take() and not limit.take()
    clock.now = 0.5
    assert limit.take() and not limit.take()


def _router(mode: str = "fallback", error_rate: float = 0.0, **config) -> tuple[Router, Clock]:
    clock = Clock()
    gold = {"0": "card_arrival", "1": "exchange_rate", "2": "pin_blocked"}
    frontier = SimulatedTeacher(SPEC, gold, error_rate=error_rate, price_per_item_usd=0.01, budget_usd=100)
    return Router(SPEC, RouterConfig(mode=mode, **config), frontier, clock=clock), clock


ANSWERS = [("card_arrival", True, 0.95), ("pin_blocked", True, 0.30), (None, False, 0.0)]


def test_fallback_sends_unsure_and_invalid_answers_to_the_frontier():
    router, _ = _router()
    routed = asyncio.run(router.route(["a", "b", "c"], ANSWERS, CALIBRATION))
    assert [r.served_by for r in routed] == [SLM, FRONTIER, FRONTIER]
    assert [r.answer for r in routed] == ["card_arrival", "exchange_rate", "pin_blocked"]  # the frontier knows each input by its id
    assert [r.slm_answer for r in routed] == ["card_arrival", "pin_blocked", None]
    assert routed[0].reason == "confident" and routed[1].reason == "low_confidence"
    assert routed[1].calibrated_confidence == pytest.approx(0.30) and routed[1].frontier_cost_usd == pytest.approx(0.01)
    assert router.spend.spent_usd == pytest.approx(0.02)


def test_shadow_and_off_never_call_the_frontier():
    for mode, reasons in (("shadow", ["shadow:slm", "shadow:frontier", "shadow:frontier"]), ("off", ["off"] * 3)):
        router, _ = _router(mode)
        routed = asyncio.run(router.route(["a", "b", "c"], ANSWERS, CALIBRATION))
        assert [r.served_by for r in routed] == [SLM] * 3 and [r.reason for r in routed] == reasons
        assert router.spend.spent_usd == 0


def test_a_version_without_calibration_routes_nothing():
    router, _ = _router()
    routed = asyncio.run(router.route(["a"], ANSWERS[1:2], None))
    assert (routed[0].served_by, routed[0].reason, routed[0].calibrated_confidence) == (SLM, "uncalibrated", None)


def test_over_the_cap_the_small_model_answers_flagged():
    router, _ = _router(daily_spend_usd=0.025)  # one unsure input costs 0.01 and reserves 0.02 (a retry round)
    first = asyncio.run(router.route(["a", "b"], ANSWERS[:2], CALIBRATION))
    second = asyncio.run(router.route(["a", "b"], ANSWERS[:2], CALIBRATION))
    assert first[1].served_by == FRONTIER
    assert (second[1].served_by, second[1].reason, second[1].answer) == (UNAVAILABLE, "over_budget", "pin_blocked")
    assert router.spend.spent_usd <= 0.025


def test_the_rate_limit_and_the_breaker_flag_the_answer_instead_of_failing():
    router, clock = _router(requests_per_second=1.0, breaker_failures=1, breaker_cooldown_s=5)
    assert asyncio.run(router.route(["b"], ANSWERS[1:2], CALIBRATION))[0].served_by == FRONTIER
    limited = asyncio.run(router.route(["b"], ANSWERS[1:2], CALIBRATION))[0]
    assert (limited.served_by, limited.reason) == (UNAVAILABLE, "rate_limited")
    router.breaker.failed()
    clock.now = 2.0  # the bucket has refilled; the breaker is still open
    blocked = asyncio.run(router.route(["b"], ANSWERS[1:2], CALIBRATION))[0]
    assert (blocked.served_by, blocked.reason) == (UNAVAILABLE, "breaker_open")
    clock.now = 7.0
    assert asyncio.run(router.route(["b"], ANSWERS[1:2], CALIBRATION))[0].served_by == FRONTIER
    assert router.breaker.state == "closed"


def test_frontier_answers_and_audits_raise_the_threshold_when_confident_answers_go_wrong():
    # Inputs at 0.4 go to the frontier; at 0.8 the small model serves (the version keeps >= 0.6),
    # but on this traffic its 0.8 answers are wrong one time in two, so callers get ~0.74. The
    # frontier's answers to both show it, and the router sends the 0.8 inputs to the frontier too.
    labels = SPEC.labels
    gold = {f"i{k}": labels[k % 3] for k in range(400)}
    frontier = SimulatedTeacher(SPEC, gold, error_rate=0.0, price_per_item_usd=0.001, budget_usd=100)
    clock = Clock()
    router = Router(SPEC, RouterConfig(mode="fallback", audit_share=0.5, live_min_labels=40, daily_spend_usd=100), frontier, clock=clock)
    seen = []
    for k in range(400):
        clock.now += 1.0  # the rate limit's bucket refills
        right, confidence = gold[f"i{k}"], 0.4 if k % 2 else 0.8
        answer = right if (k // 2) % 2 else labels[(k + 1) % 3]  # half of each kind wrong
        routed = asyncio.run(router.route(["x"], [(answer, True, confidence)], CALIBRATION, [f"i{k}"]))[0]
        seen.append((confidence, routed.served_by))
        if routed.served_by == SLM:  # what serving/app.py does for an audited answer
            router.record_audit([answer], [right], CALIBRATION, [routed.calibrated_confidence])
    assert [by for c, by in seen[:40] if c == 0.8] == [SLM] * 20  # the version's threshold, until labels accrue
    assert [by for c, by in seen[-100:] if c == 0.8] == [FRONTIER] * 50
    assert router.stats.threshold > 0.8 and router.stats.audited > 0


def test_with_the_live_threshold_off_the_versions_threshold_stands():
    router, clock = _router(live_threshold=False, live_min_labels=2)
    for k in range(60):
        clock.now += 1.0
        routed = asyncio.run(router.route(["a"], [("pin_blocked", True, 0.8)], CALIBRATION, ["0"]))[0]
        router.record_audit(["pin_blocked"], ["card_arrival"], CALIBRATION, [0.8])  # always wrong, audited
    assert routed.served_by == SLM and router.stats.threshold == 0.6
