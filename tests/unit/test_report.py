"""The demo's final report: markdown with plots beside it, self-contained HTML, the CLI's table."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timezone

import pytest
from rich.console import Console

from slm_flywheel.app.report import DemoReport, RollbackAct, TrafficPhase, difference_ci95, summary_table, write_reports
from slm_flywheel.config import CostConfig
from slm_flywheel.models.costs import CostLedger, TrafficDay, TrainingRun, build_ledger
from slm_flywheel.models.drift import DriftTest
from slm_flywheel.models.promotion import HistoryEntry
from slm_flywheel.models.usage import SIMULATED_MODEL, AuditRecord, UsageRecord


def _ledger() -> CostLedger:
    """A synthetic ledger of the demo's shape: one day, 1,300 requests, 300 simulated labels, two trainings."""
    day = datetime(2026, 11, 28, 16, tzinfo=timezone.utc)
    traffic = [TrafficDay(day.date(), 1300, 0, 26_000, 6_500, 0, 0, 1300, 1.0)]
    usage = [UsageRecord(day, "banking-intent", "relabel", SIMULATED_MODEL, 0, 0, 1)] * 300
    usage += [UsageRecord(day, "banking-intent", "audit", SIMULATED_MODEL, 0, 0, 1)] * 40
    audits = [AuditRecord(day, "banking-intent", 3, 40, 30)]
    training = [TrainingRun("a", day, 250.0), TrainingRun("b", day, 300.0)]
    return build_ledger("banking-intent", traffic, usage, audits, training, CostConfig(), simulated_price_per_item=0.0005)


COSTS = _ledger()


def _test(name, effect, threshold, p, drifted):
    # p_value is Holm-corrected in a DriftTest
    return DriftTest(name, statistic=effect, p_value=p, effect=effect, threshold=threshold, significant=p < 0.05, drifted=drifted, detail={"p_value_uncorrected": p / 4})


FULL = DemoReport(
    workload="banking-intent",
    scenario="prior-shift",
    fast=False,
    home="/abs/.flywheel/demo",
    teacher="simulated-teacher (SIMULATED frontier model)",
    launch_drift_detected=False,
    drift_detected=True,
    drift_reason="drift in input_mmd (effect 0.0412 >= 0.002, p=0.0199)",
    champion_version=1,
    candidate_version=2,
    promoted_version=2,
    gate_reasons=["candidate beats champion on the drift slice by +0.1910 (p=0.000244) with no regression"],
    relabeled=300,
    teacher_cost=0.15,
    teacher_cached=0,
    to_review=15,
    live_accuracy_launch=0.713,
    live_accuracy_before=0.27,
    live_accuracy_after=0.5,
    live_accuracy_rollback=0.48,
    champion_drift_accuracy=0.2697,
    candidate_drift_accuracy=0.4607,
    drift_tests={
        "launch": [_test("input_mmd", 0.0011, 0.002, 0.41, False), _test("label_js", 0.02, 0.1, 0.6, False), _test("confidence_ks", 0.04, 0.1, 0.9, False), _test("low_confidence_share", 0.01, 0.05, 1.0, False)],
        "drifted": [
            _test("input_mmd", 0.0412, 0.002, 0.0199, True),
            _test("label_js", 0.52, 0.1, 0.0199, True),
            _test("confidence_ks", 0.12, 0.1, 0.0199, True),
            _test("low_confidence_share", 0.03, 0.05, 0.02, False),
        ],
    },
    gate_metrics={
        "base_golden_headline": 0.01, "champion_golden_headline": 0.588, "candidate_golden_headline": 0.618,
        "base_drift_headline": 0.0, "champion_drift_headline": 0.27, "candidate_drift_headline": 0.46,
        "drift_gain": 0.191, "mcnemar_p": 0.000244, "candidate_latency_p95_ms": 120.0,
    },
    timeline=[
        TrafficPhase("launch", "steady", 300, 0.713, "banking-intent@v1"),
        TrafficPhase("drift", "prior-shift", 400, 0.27, "banking-intent@v1", served_accuracy=0.86, frontier_share=0.7),
        TrafficPhase("after retrain", "prior-shift", 400, 0.5, "banking-intent@v2", served_accuracy=0.88, frontier_share=0.45),
        TrafficPhase("bad promotion", "prior-shift", 200, 0.1, "banking-intent@v3"),
        TrafficPhase("after rollback", "prior-shift", 200, 0.48, "banking-intent@v2"),
    ],
    history=[
        HistoryEntry("bootstrap", "train-adapter (launch)", "2026-11-28T16:00:00+00:00", None, 1, "first champion"),
        HistoryEntry("promote", "nightly-retrain (auto)", "2026-11-28T17:00:00+00:00", 1, 2, "gate passed | drift slice +0.19", {"drift_gain": 0.191}),
        HistoryEntry("rollback", "rollback-guard", "2026-11-28T17:30:00+00:00", 3, 2, "teacher agreement fell"),
    ],
    rollback=RollbackAct(bad_version=3, restored_version=2, reasons=["teacher agreement fell from 0.95 to 0.40"], completed=True),
    rollback_completed=True,
    frontier_share_drift=0.7,
    frontier_share_after=0.45,
    served_accuracy_drift=0.86,
    costs=COSTS,
    cost_usd=COSTS.total.cost_usd,
    frontier_only_cost_usd=COSTS.total.frontier_only_usd,
    savings_pct=COSTS.total.savings_pct,
    stage_seconds={"pull base model": 0.0, "train launch champion": 250.7, "traffic: drift (prior-shift)": 40.2, "nightly-retrain": 300.1, "promote and push": 3.0},
)

# What a `--fast` run may leave that stopped after the drifted traffic: no teacher labels, no candidate, no rollback act, no ledger.
MINIMAL = DemoReport(
    "banking-intent", "prior-shift", fast=True, champion_version=1, live_accuracy_before=0.3,
    timeline=[TrafficPhase("launch", "steady", 80, None, "banking-intent@v1"), TrafficPhase("drift", "prior-shift", 160, 0.3, "banking-intent@v1")],
)


def test_full_report_writes_markdown_with_plot_files_and_self_contained_html(tmp_path):
    paths = write_reports(FULL, tmp_path)
    assert paths["markdown"] == tmp_path / "report.md" and paths["html"] == tmp_path / "report.html"
    assert {name for name in paths if name.startswith("plot:")} == {"plot:drift", "plot:live_accuracy", "plot:teacher", "plot:gate", "plot:costs"}
    md, page = paths["markdown"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    for name in ("drift", "live_accuracy", "teacher", "gate", "costs"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"](plots/{name}.png)" in md
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 5
    assert "plots/" not in page  # nothing outside the file

    # The margin comes with its 95% interval from the traffic counts (400 requests each side).
    assert "0.270 → 0.500 (+23.0 points, 95% CI +16.3 to +29.4: a real gain)" in md
    assert "SIMULATED frontier model" in md and "$0.15" in md
    assert ".venv/bin/prefect server start" in md and "http://127.0.0.1:4200" in md
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api make demo" in md
    assert ".venv/bin/mlflow ui --backend-store-uri sqlite:////abs/.flywheel/demo/mlflow.db" in md and "http://127.0.0.1:5000" in md
    # The registry history is a table; a "|" inside a reason does not break it.
    assert "| 2026-11-28T17:00:00+00:00 | nightly-retrain (auto) | promote | v1 → v2 | gate passed \\| drift slice +0.19 |" in md
    assert "| train launch champion | 250.7 |" in md
    assert "v3 was promoted on purpose" in md and "teacher agreement fell from 0.95 to 0.40" in md
    assert "while the bad version served: 0.480" in md
    assert "SIMULATED" in page and "0.270 → 0.500" in page and "<code>.venv/bin/prefect server start</code>" in page


def test_minimal_report_says_na_and_skips_the_plots_it_cannot_draw(tmp_path):
    paths = write_reports(MINIMAL, tmp_path)
    md = paths["markdown"].read_text(encoding="utf-8")
    assert set(paths) == {"markdown", "html", "plot:live_accuracy"}  # only live accuracy has data
    assert "| promoted version | n/a |" in md
    assert "0.300 → n/a" in md
    assert "Nothing was promoted" in md and "not run in this demo" in md
    assert "SIMULATED" in md and "sqlite:///.flywheel/demo/mlflow.db" in md
    empty = write_reports(DemoReport("banking-intent", "prior-shift", fast=True), tmp_path / "empty")  # before any stage ran
    assert set(empty) == {"markdown", "html"} and "| rollback completed | n/a |" in empty["markdown"].read_text(encoding="utf-8")


def test_a_plot_draws_whatever_fields_exist(tmp_path):
    partial = DemoReport(
        "banking-intent", "prior-shift", fast=True,
        drift_tests={"launch": []},  # a nightly run with no tests: no panel
        gate_metrics={"candidate_drift_headline": 0.4},
        relabeled=5,
        timeline=[TrafficPhase("launch", "steady", 80, None, "banking-intent@v1")],  # no gold answer: no point
    )
    paths = write_reports(partial, tmp_path)
    assert {name for name in paths if name.startswith("plot:")} == {"plot:gate", "plot:teacher"}
    assert "5 labels, simulated cost $0.00 (0 from cache, 0 to human review)" in paths["markdown"].read_text(encoding="utf-8")


def test_summary_table_has_the_headline_rows_then_seconds_per_stage():
    console = Console(width=200, record=True)
    console.print(summary_table(FULL))
    text = console.export_text()
    for row in ("drift detected", "promoted version", "live accuracy before → after", "rollback completed", "teacher (SIMULATED)", "total seconds"):
        assert row in text
    assert "0.270 → 0.500 (+23.0 points, 95% CI +16.3 to +29.4: a real gain)" in text and "v2" in text and "yes (v3 → v2)" in text
    assert "$0.15" in text and "594" in text  # total of the stage seconds
    assert text.index("total seconds") < text.index("seconds: train launch champion")
    console.print(summary_table(MINIMAL))
    assert "n/a" in console.export_text()


def test_difference_interval_matches_newcombes_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 vs 48/80 -> 0.0524 to 0.3339.
    low, high = difference_ci95(48 / 80, 80, 56 / 70, 70)
    assert round(low, 4) == 0.0524 and round(high, 4) == 0.3339
    # Small samples: a 3.5-point move on 160 and 60 requests is noise, and the interval says so.
    low, high = difference_ci95(0.131, 160, 0.167, 60)
    assert low < 0 < high


def test_cost_section_shows_the_ledger_against_frontier_only_with_its_chart(tmp_path):
    total = COSTS.total
    # The synthetic ledger's arithmetic: 1 h of serving at $0.50, 550 s of training at $1.20/h,
    # 340 simulated calls at $0.0005, against 26,000 + 6,500 tokens at gpt-4o-mini's $0.15 / $0.60.
    assert total.cost_usd == pytest.approx(0.5 + 550 / 3600 * 1.2 + 340 * 0.0005)
    assert total.frontier_only_usd == pytest.approx((26_000 * 0.15 + 6_500 * 0.60) / 1e6)
    md = write_reports(FULL, tmp_path)["markdown"].read_text(encoding="utf-8")
    section = md[md.index("## Costs") : md.index("## Registry history")]
    assert "every request sent to `gpt-4o-mini`" in section and "SIMULATED" in section
    assert "| day | requests | frontier $ | relabel $ | serving $ | training $ | cost $ | frontier-only $ | savings % |" in section
    assert "| 2026-11-28 | 1300 | $0.17 | $0.15 | $0.50 | $0.18 | $0.85 | $0.0078 | -10840.2% |" in section
    assert "| total | 1300 |" in section
    assert "40, of which 75.0% agreed" in section
    # $0.85333 a day of fixed costs over $0.0000060 saved per request.
    assert "**Break-even:** 142,222 requests a day, at $0.0000060 per frontier request" in section
    assert "](plots/costs.png)" in section  # the chart sits beside its table
    # The summary row says the volume the savings figure holds at, and where it turns.
    assert "| cost vs frontier-only | $0.85 vs $0.0078 (savings -10840.2%) at 1,300 requests; cheaper than frontier-only above 142,222 requests a day |" in md


def test_cost_summary_says_when_the_small_model_never_pays_off(tmp_path):
    never = dataclasses.replace(FULL, costs=dataclasses.replace(COSTS, break_even_requests_per_day=None))
    md = write_reports(never, tmp_path)["markdown"].read_text(encoding="utf-8")
    assert "(savings -10840.2%) at 1,300 requests; never cheaper than frontier-only at these prices |" in md


def test_cost_section_says_na_without_a_ledger(tmp_path):
    md = write_reports(MINIMAL, tmp_path)["markdown"].read_text(encoding="utf-8")
    assert "## Costs\n\nn/a" in md and "| cost vs frontier-only | n/a |" in md


def test_report_json_is_the_typed_report_with_the_ledgers_totals():
    data = json.loads(json.dumps(FULL.to_dict(), default=str))
    assert data["costs"]["total"]["cost_usd"] == pytest.approx(COSTS.total.cost_usd)  # a derived total, not a field
    assert data["rollback"] == {"bad_version": 3, "restored_version": 2, "reasons": ["teacher agreement fell from 0.95 to 0.40"], "completed": True}
    assert [phase["requests"] for phase in data["timeline"]] == [300, 400, 400, 200, 200]
    assert data["history"][1]["from_version"] == 1 and data["drift_tests"]["drifted"][1]["p_value"] == 0.0199
    assert MINIMAL.to_dict()["costs"] is None


def test_the_router_row_says_served_accuracy_and_the_frontier_share_before_and_after(tmp_path):
    md = write_reports(FULL, tmp_path)["markdown"].read_text(encoding="utf-8")
    assert "| router: served accuracy during drift | 0.860 with the frontier answering 70% (the small model alone 0.270); after the retrain the frontier answers 45% |" in md
    assert "| router: served accuracy during drift | n/a |" in write_reports(MINIMAL, tmp_path / "minimal")["markdown"].read_text(encoding="utf-8")
    data = json.loads(json.dumps(FULL.to_dict(), default=str))
    assert (data["frontier_share_drift"], data["frontier_share_after"], data["served_accuracy_drift"]) == (0.7, 0.45, 0.86)
    assert data["timeline"][1]["served_accuracy"] == 0.86 and data["timeline"][0]["frontier_share"] is None
