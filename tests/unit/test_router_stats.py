"""The router's captured rows as free labels, and its honesty figures (models/router_stats.py)."""

from datetime import datetime, timezone

import pandas as pd
import pytest

from slm_flywheel.models.router_stats import (
    AUDIT,
    FALLBACK,
    ROUTER_SOURCE,
    merge_labels,
    router_figures,
    router_label_rows,
    router_table,
    unlabelled_mask,
)
from slm_flywheel.models.workload import TaskSpec

INTENTS = TaskSpec("banking-intent", "classification", "{text}", labels=("card_arrival", "lost_card", "top_up"))
SLOTS = TaskSpec("restaurant-slots", "extraction", "{text}", slots=("people", "time"))
DAY1, DAY2 = datetime(2025, 3, 1, 10, tzinfo=timezone.utc), datetime(2025, 3, 2, 10, tzinfo=timezone.utc)


def _row(request_id, text, answer, served_by, *, served_answer=None, audit=None, calibrated=None, latency=None, cost=None, at=DAY1, version="banking-intent@v1"):
    return {
        "timestamp": at, "request_id": request_id, "input": text, "answer": answer, "valid": answer is not None, "confidence": 0.5,
        "adapter_version": version, "served_by": served_by, "served_answer": served_answer if served_answer is not None else answer,
        "calibrated_confidence": calibrated, "frontier_latency_ms": latency, "frontier_cost_usd": cost, "audit_answer": audit,
    }


def _window():
    return pd.DataFrame([
        _row("r1", "where is my card", "lost_card", "frontier", served_answer="card_arrival", calibrated=0.2, latency=100.0, cost=0.01),
        _row("r2", "top me up", "top_up", "slm", calibrated=0.9, audit="top_up"),
        _row("r3", "i lost it", "card_arrival", "slm", calibrated=0.8, audit="lost_card"),
        _row("r4", "card please", "card_arrival", "slm", calibrated=0.7),
        _row("r5", "my card?", "top_up", "slm-frontier-unavailable", calibrated=0.1, latency=300.0),
        _row("r6", "where is my card", "lost_card", "frontier", served_answer="lost_card", calibrated=0.3, latency=200.0, cost=0.02),  # asked again
        _row("r7", "old file row", "top_up", None),  # written before the router
    ])


def test_frontier_answers_and_audits_become_router_labels_one_per_text():
    labels = router_label_rows(_window())
    assert list(labels["id"]) == ["r1", "r2", "r3"]  # r6 repeats r1's text: the first answer stays
    assert list(labels["label"]) == ["card_arrival", "top_up", "lost_card"]  # the frontier's, not the small model's
    assert list(labels["kind"]) == [FALLBACK, AUDIT, AUDIT] and set(labels["source"]) == {ROUTER_SOURCE}


def test_rows_written_before_the_router_give_no_labels_and_no_figures():
    old = _window().drop(columns=["served_by", "served_answer", "audit_answer", "calibrated_confidence", "frontier_latency_ms", "frontier_cost_usd"])
    assert router_label_rows(old).empty
    assert router_figures(old, INTENTS) == []


def test_an_unavailable_frontier_or_an_unaudited_answer_is_not_a_label():
    window = pd.DataFrame([_row("a", "x", "top_up", "slm-frontier-unavailable"), _row("b", "y", "top_up", "slm")])
    assert router_label_rows(window).empty


def test_unlabelled_mask_leaves_out_labelled_requests_and_their_texts_elsewhere():
    window = _window()
    mask = unlabelled_mask(window, router_label_rows(window))
    # r6 was never labelled itself, but its text was (r1): the teacher is not asked about it.
    assert list(window["request_id"][mask]) == ["r4", "r5", "r7"]


def test_merge_keeps_one_label_per_text_and_a_reviewers_label_wins():
    router = router_label_rows(_window())
    teacher = pd.DataFrame({"id": ["t1", "old"], "text": ["new text", "i lost it"], "label": ["top_up", "card_arrival"]})
    merged = merge_labels(router, teacher)
    assert merged["text"].is_unique and len(merged) == 4
    assert merged.set_index("text").loc["i lost it", "label"] == "card_arrival"  # reviewed (teacher side), not the audit
    assert list(merged["source"]) == ["teacher", "teacher", ROUTER_SOURCE, ROUTER_SOURCE]


def test_figures_per_day_and_version():
    window = pd.concat([
        _window(),
        pd.DataFrame([_row("d2", "later", "top_up", "slm", calibrated=0.95, at=DAY2), _row("v2", "new version", "top_up", "frontier", served_answer="top_up", cost=0.5, version="banking-intent@v2")]),
    ], ignore_index=True)
    figures = {(f.day, f.version): f for f in router_figures(window, INTENTS)}
    assert set(figures) == {("2025-03-01", "banking-intent@v1"), ("2025-03-02", "banking-intent@v1"), ("2025-03-01", "banking-intent@v2")}
    day1 = figures["2025-03-01", "banking-intent@v1"]
    assert (day1.routed, day1.frontier, day1.unavailable, day1.slm_served) == (6, 2, 1, 3)  # r7 has no route
    assert day1.frontier_share == pytest.approx(2 / 6)
    assert day1.frontier_latency_ms == pytest.approx(200.0)  # 100, 300 (the unavailable call waited too), 200
    assert day1.frontier_spend_usd == pytest.approx(0.03)
    # Audits: r2 agrees, r3 does not.
    assert (day1.audited, day1.wrong_path, day1.wrong_path_rate, day1.audited_agreement) == (2, 1, 0.5, 0.5)
    assert day1.label_free_accuracy == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert figures["2025-03-02", "banking-intent@v1"].wrong_path_rate is None  # nothing audited: no rate, no interval
    overall = router_figures(window, INTENTS, by_day=False)
    assert [(f.day, f.version) for f in overall] == [(None, "banking-intent@v1"), (None, "banking-intent@v2")]
    assert overall[0].routed == 7  # both days


def test_wrong_path_interval_is_wilson_and_holds_the_rate():
    from scipy.stats import binomtest

    rows = [_row(f"r{i}", f"text {i}", "top_up", "slm", audit="top_up" if i % 5 else "lost_card", calibrated=0.9) for i in range(40)]
    (figures,) = router_figures(pd.DataFrame(rows), INTENTS)
    expected = binomtest(8, 40).proportion_ci(0.95, method="wilson")
    assert (figures.wrong_path, figures.audited) == (8, 40)
    assert (figures.wrong_path_low, figures.wrong_path_high) == pytest.approx((expected.low, expected.high))
    assert figures.wrong_path_low < figures.wrong_path_rate == 0.2 < figures.wrong_path_high


def test_extraction_audits_compare_slots_not_their_order():
    rows = [
        _row("a", "2 at 7pm", '{"people": "2", "time": "7pm"}', "slm", audit='{"time": "7pm", "people": "2"}', version="restaurant-slots@v1"),
        _row("b", "3 people", '{"people": "3"}', "slm", audit='{"people": "4"}', version="restaurant-slots@v1"),
    ]
    (figures,) = router_figures(pd.DataFrame(rows), SLOTS)
    assert (figures.audited, figures.wrong_path) == (2, 1)


def test_markdown_table_has_a_row_per_day_and_version():
    table = router_table(router_figures(_window(), INTENTS))
    lines = table.splitlines()
    assert lines[0].startswith("| day | version |") and len(lines) == 3
    assert "0.500 [" in lines[2] and "(1/2)" in lines[2] and "2025-03-01" in lines[2]


def test_collect_router_labels_quarantines_a_bad_answer_with_its_reason_and_the_teacher_never_sees_the_rest(tmp_path, data_dir):
    import numpy as np
    from prefect.logging import disable_run_logger

    from slm_flywheel.config import load_settings
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.models.drift import WindowEmbeddings
    from slm_flywheel.tasks.relabel import collect_router_labels, select_samples
    from tests.conftest import REPO

    context = resolve_workload(load_settings(REPO / "flywheel.yaml", home=tmp_path, data_dir=data_dir), INTENTS.name, INTENTS)
    window = pd.concat([_window(), pd.DataFrame([_row("bad", "odd one", "top_up", "frontier", served_answer="not_an_intent")])], ignore_index=True)
    with disable_run_logger():
        labels = collect_router_labels.fn(context, window, "run1")
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(window), 4))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        selected = select_samples.fn(window, WindowEmbeddings(np.arange(len(window)), vectors), vectors[:2], budget=10, labelled=labels.labelled)
    assert (labels.fallback, labels.audit, labels.quarantined) == (1, 2, 1)
    quarantined = pd.read_parquet(context.settings.state_dir / "retrain" / INTENTS.name / "run1" / "quarantined_router_labels.parquet")
    assert list(quarantined["id"]) == ["bad"] and "expect_column_values_to_be_in_set(label)" in quarantined["failed_expectations"].iloc[0]
    # The quarantined answer is no label: that sample may still be bought. The labelled ones may not.
    assert set(selected["request_id"]) <= {"r4", "r5", "r7", "bad"} and "bad" in set(selected["request_id"])
