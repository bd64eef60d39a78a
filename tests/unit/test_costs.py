"""The cost ledger's arithmetic, its records, and the prices' validation."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slm_flywheel.config import ConfigError, load_settings
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.config import CostConfig, FrontierPrice
from slm_flywheel.models.costs import LedgerError, TrafficDay, TrainingRun, build_ledger, capture_traffic
from slm_flywheel.models.teacher import SimulatedTeacher, TeacherItem
from slm_flywheel.models.usage import SIMULATED_MODEL, AuditRecord, UsageLog, UsageLogError, UsageRecord, read_audits, read_usage, record_audit
from slm_flywheel.models.workload import TaskSpec

REPO = Path(__file__).resolve().parents[2]
DAY1, DAY2 = date(2026, 11, 28), date(2026, 11, 29)
PRICES = CostConfig(
    frontier_prices={"frontier-x": FrontierPrice(input=2.0, output=8.0), "teacher-y": FrontierPrice(input=1.0, output=4.0)},
    frontier_model="frontier-x",
    serving_usd_per_hour=0.5,
    serving_replicas=2,
    training_usd_per_hour=3.0,
)


def _at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def _usage(day: date, purpose: str, model: str, prompt: int, completion: int, items: int = 8) -> UsageRecord:
    return UsageRecord(_at(day), "w", purpose, model, prompt, completion, items)


def test_ledger_prices_every_record_per_day_and_sets_it_against_frontier_only():
    traffic = [
        # 1,000 requests of 3,000 fleet requests: a third of 24 h x $0.5 x 2 replicas = $8.
        TrafficDay(DAY1, 1000, 0, 40_000, 5_000, 0, 0, 3000, 24.0),
        # 100 of them served by the frontier (a router): their tokens are a fallback's spend.
        TrafficDay(DAY2, 2000, 100, 80_000, 10_000, 4_000, 500, 2000, 24.0),
    ]
    usage = [
        _usage(DAY1, "relabel", "teacher-y", 100_000, 20_000),
        _usage(DAY1, "relabel", "teacher-y", 100_000, 20_000),
        _usage(DAY2, "audit", "teacher-y", 10_000, 2_000),
    ]
    audits = [AuditRecord(_at(DAY2), "w", 2, 40, 36)]
    training = [TrainingRun("r1", _at(DAY1, 3), 1800.0)]
    ledger = build_ledger("w", traffic, usage, audits, training, PRICES)

    day1, day2 = ledger.days
    assert (day1.period, day1.requests, day1.slm_served, day1.frontier_served) == ("2026-11-28", 1000, 1000, 0)
    assert day1.relabel_calls == 2 and day1.audit_calls == 0
    assert day1.relabel_usd == pytest.approx(2 * (100_000 * 1.0 + 20_000 * 4.0) / 1e6)  # $0.36
    assert day1.serving_usd == pytest.approx(24 * 0.5 * 2 / 3)
    assert day1.training_usd == pytest.approx(0.5 * 3.0) and day1.training_seconds == 1800
    assert day1.frontier_only_usd == pytest.approx((40_000 * 2.0 + 5_000 * 8.0) / 1e6)
    assert day1.cost_usd == pytest.approx(0.36 + 8.0 + 1.5)
    assert day1.audited_agreement is None

    assert (day2.slm_served, day2.frontier_served, day2.audit_calls) == (1900, 100, 1)
    assert day2.fallback_usd == pytest.approx((4_000 * 2.0 + 500 * 8.0) / 1e6)
    assert day2.audit_usd == pytest.approx((10_000 + 2_000 * 4.0) / 1e6)
    assert day2.frontier_usd == pytest.approx(day2.fallback_usd + day2.audit_usd)
    assert day2.serving_usd == pytest.approx(24.0)  # the only workload that day
    assert day2.audited_agreement == pytest.approx(0.9)
    assert day2.savings_usd == pytest.approx(day2.frontier_only_usd - day2.cost_usd)
    assert day2.savings_pct == pytest.approx(100 * day2.savings_usd / day2.frontier_only_usd)

    total = ledger.total
    assert total.period == "total" and total.requests == 3000 and total.teacher_tokens == 252_000
    assert total.cost_usd == pytest.approx(day1.cost_usd + day2.cost_usd)
    assert total.audited == 40 and total.agreed == 36
    # Break-even: fixed costs per day over what a small-model request saves against the frontier.
    per_request = total.frontier_only_usd / 3000
    assert ledger.frontier_usd_per_request == pytest.approx(per_request)
    fixed = (total.serving_usd + total.training_usd + total.relabel_usd + total.audit_usd) / 2
    assert ledger.fixed_usd_per_day == pytest.approx(fixed)
    assert ledger.break_even_requests_per_day == pytest.approx(fixed / (per_request - total.fallback_usd / 3000))
    assert json.loads(json.dumps(ledger.to_dict()))["total"]["cost_usd"] == pytest.approx(total.cost_usd)


def test_since_keeps_later_days_and_no_traffic_has_no_break_even():
    usage = [_usage(DAY1, "relabel", "teacher-y", 1000, 100), _usage(DAY2, "relabel", "teacher-y", 1000, 100)]
    ledger = build_ledger("w", [], usage, [], [], PRICES, since=DAY2)
    assert [line.period for line in ledger.days] == ["2026-11-29"] and ledger.total.relabel_calls == 1
    assert ledger.frontier_usd_per_request is None and ledger.break_even_requests_per_day is None
    assert ledger.total.savings_pct is None  # nothing to compare with


def test_all_traffic_on_the_frontier_never_breaks_even():
    ledger = build_ledger("w", [TrafficDay(DAY1, 10, 10, 100, 10, 100, 10, 10, 24.0)], [], [], [], PRICES)
    assert ledger.total.fallback_usd == pytest.approx(ledger.total.frontier_only_usd)
    assert ledger.break_even_requests_per_day is None


def test_simulated_calls_are_priced_per_item_and_unpriced_models_are_refused():
    ledger = build_ledger("w", [], [_usage(DAY1, "relabel", SIMULATED_MODEL, 0, 0, items=1)] * 30, [], [], PRICES, simulated_price_per_item=0.0005)
    assert ledger.total.relabel_usd == pytest.approx(0.015) and ledger.total.relabel_calls == 30
    with pytest.raises(LedgerError, match="'gpt-unknown'.*costs.frontier_prices"):
        build_ledger("w", [], [_usage(DAY1, "audit", "gpt-unknown", 10, 10)], [], [], PRICES)


def test_capture_traffic_counts_tokens_shares_the_fleet_and_reads_served_by():
    def frame(day: date, hours: list[int], served_by: list[str] | None = None) -> pd.DataFrame:
        data = {
            "timestamp": [_at(day, hour) for hour in hours],
            "input": ["card not here"] * len(hours),
            "answer": ["card_arrival"] * len(hours),
        }
        if served_by is not None:
            data["served_by"] = served_by
        return pd.DataFrame(data)

    words = lambda texts: [len(text.split()) for text in texts]  # noqa: E731 - a stand-in tokenizer
    frames = {"a": pd.concat([frame(DAY1, [1, 2]), frame(DAY2, [5])]), "b": frame(DAY1, [4, 9, 10])}
    days = capture_traffic(frames, "a", "Message: {text}", words, serving_hours_per_day=None)
    assert [(d.day, d.requests, d.fleet_requests) for d in days] == [(DAY1, 2, 5), (DAY2, 1, 1)]
    assert days[0].prompt_tokens == 2 * 4 and days[0].completion_tokens == 2  # "Message: card not here", "card_arrival"
    assert days[0].serving_hours == 9.0 and days[1].serving_hours == 1.0  # 01:00 to 10:00; one request: one started hour
    assert capture_traffic(frames, "a", "{text}", words, 24.0)[1].serving_hours == 24.0

    routed = {"a": frame(DAY1, [1, 2, 3], served_by=["frontier", "a@v1", "frontier"])}
    (day,) = capture_traffic(routed, "a", "{text}", words, 24.0)
    assert (day.frontier_served, day.frontier_prompt_tokens, day.frontier_completion_tokens) == (2, 6, 2)
    assert capture_traffic({"b": frames["b"]}, "a", "{text}", words, 24.0) == []


def test_router_audits_are_paid_frontier_calls_in_the_ledger():
    """An audited small-model answer (an `audit_answer` in the store) was a frontier call: the
    ledger prices it at the request's tokens, as a fallback, and counts it with the audits."""
    frame = pd.DataFrame({
        "timestamp": [_at(DAY1, hour) for hour in (1, 2, 3, 4)],
        "input": ["card not here", "card not here at all", "pin", "pin"],
        "answer": ["card_arrival", "card_arrival", "change_pin", "change_pin"],
        "served_by": ["a@v1", "a@v1", "frontier", "a@v1"],
        "audit_answer": ["card_arrival", "lost_or_stolen_card", None, None],
    })
    words = lambda texts: [len(text.split()) for text in texts]  # noqa: E731 - a stand-in tokenizer
    (day,) = capture_traffic({"a": frame}, "a", "{text}", words, 24.0)
    assert (day.router_audits, day.router_audit_prompt_tokens, day.router_audit_completion_tokens) == (2, 3 + 5, 2)
    usage = [_usage(DAY1, "audit", "teacher-y", 10_000, 2_000)]  # a rollback-guard audit the same day
    line = build_ledger("a", [day], usage, [], [], PRICES).days[0]
    assert line.audit_calls == 2 + 1
    assert line.audit_usd == pytest.approx((8 * 2.0 + 2 * 8.0) / 1e6 + (10_000 + 2_000 * 4.0) / 1e6)
    assert line.fallback_usd == pytest.approx((1 * 2.0 + 1 * 8.0) / 1e6)
    assert line.frontier_usd == pytest.approx(line.fallback_usd + line.audit_usd)


def test_usage_and_audit_logs_round_trip_and_a_bad_line_is_named(tmp_path):
    log = UsageLog(tmp_path / "usage" / "w.jsonl", "w", "relabel")
    first = log.record("teacher-y", 120, 30, 8)
    second = log.record("teacher-y", 400, 90, 8, estimated=True)
    assert read_usage(log.path) == [first, second]
    audit = record_audit(tmp_path / "usage" / "w.audits.jsonl", "w", 3, 40, 31)
    assert read_audits(tmp_path / "usage" / "w.audits.jsonl") == [audit]
    assert read_usage(tmp_path / "absent.jsonl") == []
    with pytest.raises(ValueError, match="purpose"):
        UsageLog(tmp_path / "x.jsonl", "w", "shopping")  # type: ignore[arg-type]
    with log.path.open("a") as handle:
        handle.write('{"at": "2026-11-29T01:00:00+00:00", "workload": "w"\n')
    with pytest.raises(UsageLogError, match=r"w\.jsonl:3"):
        read_usage(log.path)


def test_the_simulated_teacher_writes_one_record_per_paid_item(tmp_path):
    spec = TaskSpec(name="w", task="classification", prompt_template="{text}", labels=("a", "b"))
    items = [TeacherItem(str(i), f"text {i}") for i in range(5)]
    gold = {str(i): "a" for i in range(4)}  # item 4 has no gold: not answered, not paid
    log = UsageLog(tmp_path / "w.jsonl", "w", "audit")
    run = SimulatedTeacher(spec, gold, price_per_item_usd=0.01, budget_usd=1.0, usage_log=log).label(items)
    records = read_usage(log.path)
    assert len(records) == run.calls == 4 and {r.purpose for r in records} == {"audit"}
    ledger = build_ledger("w", [], records, [], [], PRICES, simulated_price_per_item=0.01)
    assert ledger.total.audit_usd == pytest.approx(run.cost_usd)


# Prices in the configuration.


def _config(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    change(data)
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_checked_in_prices_load():
    costs = load_settings(REPO / "flywheel.yaml").costs
    assert costs.frontier_model in costs.frontier_prices and costs.serving_replicas >= 1


def test_a_negative_price_is_rejected_naming_the_field(tmp_path):
    path = _config(tmp_path, lambda data: data["costs"]["frontier_prices"]["gpt-4o"].update(output=-1))
    with pytest.raises(ConfigError, match=r"costs\.frontier_prices\.gpt-4o\.output"):
        load_settings(path)
    path = _config(tmp_path, lambda data: data["costs"].update(serving_usd_per_hour=-0.5))
    with pytest.raises(ConfigError, match=r"costs\.serving_usd_per_hour"):
        load_settings(path)


def test_a_teacher_model_without_a_price_is_rejected_naming_the_field(tmp_path):
    teacher = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-5-unpriced"}
    path = _config(tmp_path, lambda data: data["workloads"]["banking-intent"].update(teacher=teacher))
    with pytest.raises(ConfigError, match=r"workloads\.banking-intent\.teacher\.model: 'gpt-5-unpriced' has no entry in costs\.frontier_prices"):
        load_settings(path)
    priced = _config(tmp_path, lambda data: data["workloads"]["banking-intent"].update(teacher={**teacher, "model": "gpt-4o"}))
    assert load_settings(priced).workload("banking-intent").teacher.model == "gpt-4o"


def test_an_unpriced_counterfactual_model_is_rejected_naming_the_field(tmp_path):
    path = _config(tmp_path, lambda data: data["costs"].update(frontier_model="claude-unpriced"))
    with pytest.raises(ConfigError, match=r"costs\.frontier_model: 'claude-unpriced'"):
        load_settings(path)


def test_relabel_and_audit_tasks_leave_the_records_the_ledger_reads(tmp_path, data_dir):
    from prefect.logging import disable_run_logger

    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.tasks.costs import compute_ledger
    from slm_flywheel.tasks.guard import measure_live_signals
    from slm_flywheel.models.teacher import ground_truth_path
    from slm_flywheel.tasks.relabel import relabel_with_teacher

    settings = load_settings(REPO / "flywheel.yaml", home=tmp_path, data_dir=data_dir)
    spec = TaskSpec("banking-intent", "classification", "{text}", labels=("card_arrival", "exchange_rate"))
    gold = {f"r{i}": spec.labels[i % 2] for i in range(30)}
    ground_truth_path(settings.home).parent.mkdir(parents=True)
    ground_truth_path(settings.home).write_text("".join(json.dumps({"request_id": rid, "gold": label}) + "\n" for rid, label in gold.items()))
    relabelled = pd.DataFrame({"request_id": [f"r{i}" for i in range(10)], "input": [f"text {i}" for i in range(10)]})
    # The served answers: the first 10 of the audited 20 are the gold, the rest the other label.
    served = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(10, 30)],
        "input": [f"served text {i}" for i in range(10, 30)],
        "answer": [gold[f"r{i}"] if i < 20 else spec.labels[(i + 1) % 2] for i in range(10, 30)],
        "valid": True,
        "confidence": 0.9,
    })
    with disable_run_logger():
        context = resolve_workload(settings, "banking-intent", spec)
        result = relabel_with_teacher.fn(context, relabelled, "run1")
        signals = measure_live_signals.fn(context, 2, served, audit_budget=20)

    ledger = compute_ledger(context, mlflow_client(settings), count_tokens=lambda texts: [1] * len(texts))
    total = ledger.total
    price = settings.workload("banking-intent").teacher.simulated_price_per_item
    assert total.relabel_calls == 10 and total.relabel_usd == pytest.approx(result.cost_usd) == pytest.approx(10 * price)
    assert total.audit_calls == signals.audited == 20 and total.audit_usd == pytest.approx(20 * price)
    assert total.audited == 20 and total.audited_agreement == pytest.approx(signals.agreement)
    assert total.requests == 0  # nothing was captured in this test
