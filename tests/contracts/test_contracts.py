"""The great-expectations suites: each expectation catches the rows it is meant to, by name."""

from datetime import datetime, timezone

import pandas as pd
import pytest

from slm_flywheel.data_contracts.contracts import (
    ContractError,
    split_quarantine,
    validate_production_samples,
    validate_teacher_labels,
    validate_training_set,
)
from slm_flywheel.models.workload import TaskSpec

INTENTS = TaskSpec("banking-intent", "classification", "{text}", labels=("card_arrival", "exchange_rate"))
SLOTS = TaskSpec("restaurant-slots", "extraction", "{text}", slots=("people", "time"))


def _samples(rows):
    now = datetime(2026, 11, 28, tzinfo=timezone.utc)
    base = {"timestamp": now, "workload": "banking-intent", "valid": True, "confidence": 0.9, "adapter_version": "banking-intent@v1", "latency_ms": 3.0, "replica_id": "r"}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_production_samples_quarantine_bad_rows_with_the_failed_expectation():
    frame = _samples(
        [
            {"request_id": "a", "input": "where is my card", "answer": "card_arrival"},
            {"request_id": "b", "input": "", "answer": "card_arrival"},
            {"request_id": "c", "input": "x" * 3000, "answer": "card_arrival"},
            {"request_id": "d", "input": "rate?", "answer": "exchange_rate", "confidence": 1.7},
            {"request_id": "e", "input": "hmm", "answer": "made_up_label"},
            {"request_id": "f", "input": "invalid answers are fine", "answer": None, "valid": False, "confidence": 0.0},
        ]
    )
    result = validate_production_samples(frame, INTENTS, max_text_chars=2000)
    assert not result.success
    good, bad = split_quarantine(frame, result)
    assert list(good["request_id"]) == ["a", "f"]
    reasons = dict(zip(bad["request_id"], bad["failed_expectations"]))
    assert "expect_column_value_lengths_to_be_between(input)" in reasons["b"]
    assert "expect_column_value_lengths_to_be_between(input)" in reasons["c"]
    assert "expect_column_values_to_be_between(confidence)" in reasons["d"]
    assert "expect_column_values_to_be_in_set(answer_in_schema)" in reasons["e"]
    assert len(good) + len(bad) == len(frame)  # nothing dropped


def test_production_samples_missing_column_is_a_contract_error():
    frame = _samples([{"request_id": "a", "input": "x", "answer": "card_arrival"}]).drop(columns=["confidence"])
    with pytest.raises(ContractError, match=r"expect_column_to_exist\(confidence\)"):
        validate_production_samples(frame, INTENTS, max_text_chars=2000)


def test_teacher_labels_out_of_schema_and_non_spans_fail():
    intents = pd.DataFrame({"text": ["a", "b", "c"], "label": ["card_arrival", "nope", None]})
    result = validate_teacher_labels(intents, INTENTS)
    assert sorted(result.row_failures) == [1, 2]
    slots = pd.DataFrame({"text": ["for 4 at 7pm", "for 4 at 7pm", "for 4"], "label": ['{"people": "4", "time": "7pm"}', '{"people": "5"}', '{"guests": "4"}']})
    result = validate_teacher_labels(slots, SLOTS)
    assert sorted(result.row_failures) == [1, 2]
    assert result.row_failures[1] == ["expect_column_values_to_be_in_set(label_is_slot_json_of_spans)"]


def test_training_set_conflicts_golden_and_thin_labels_fail_by_name():
    frame = pd.DataFrame(
        {
            "text": ["where is my card", "where is my card", "rate today", "golden text", "card late"],
            "label": ["card_arrival", "exchange_rate", "exchange_rate", "card_arrival", "card_arrival"],
        }
    )
    result = validate_training_set(frame, INTENTS, golden_texts=["golden text"], min_per_label=3, max_text_chars=2000)
    assert not result.success
    assert result.row_failures[0] == result.row_failures[1] == ["expect_column_values_to_be_in_set(text_has_one_label)"]
    assert result.row_failures[3] == ["expect_column_values_to_be_in_set(not_in_golden)"]
    assert any("examples per label >= 3" in name and "exchange_rate" in name for name in result.table_failures)
    error = ContractError(result)
    assert "text_has_one_label" in str(error) or "examples per label" in str(error)


def test_a_clean_training_set_passes():
    frame = pd.DataFrame({"text": [f"card {i}" for i in range(3)] + [f"rate {i}" for i in range(3)], "label": ["card_arrival"] * 3 + ["exchange_rate"] * 3})
    result = validate_training_set(frame, INTENTS, golden_texts=["other"], min_per_label=3, max_text_chars=2000)
    assert result.success and result.failed_expectations == [] and "passed" in result.to_markdown()


def test_production_samples_fail_closed_on_non_text_input_nan_confidence_and_length_bounds():
    frame = _samples(
        [
            {"request_id": "a", "input": "where is my card", "answer": "card_arrival"},
            {"request_id": "b", "input": "", "answer": "card_arrival"},
            {"request_id": "c", "input": "x" * 100_000, "answer": "card_arrival"},
            {"request_id": "d", "input": "rate?", "answer": "exchange_rate", "confidence": float("nan")},
            {"request_id": "e", "input": "rate?", "answer": "exchange_rate", "confidence": float("inf")},
            {"request_id": "f", "input": b"\xff\xfe not utf-8", "answer": "card_arrival"},  # made GX's length check raise
        ]
    )
    result = validate_production_samples(frame, INTENTS, max_text_chars=2000)
    assert not result.success and not result.table_failures  # every failure is tied to its rows
    good, bad = split_quarantine(frame, result)
    assert list(good["request_id"]) == ["a"]
    reasons = dict(zip(bad["request_id"], bad["failed_expectations"]))
    assert "expect_column_value_lengths_to_be_between(input)" in reasons["b"]
    assert "expect_column_value_lengths_to_be_between(input)" in reasons["c"]
    assert "expect_column_values_to_not_be_null(confidence)" in reasons["d"]
    assert "expect_column_values_to_be_between(confidence)" in reasons["e"]
    assert "expect_column_values_to_be_in_set(input_is_text)" in reasons["f"]


def test_an_expectation_that_raises_fails_the_contract_and_quarantines_every_row():
    import great_expectations as gx

    from slm_flywheel.data_contracts.contracts import _run_suite

    frame = pd.DataFrame({"text": ["fine", b"\xff\xfe", ""]})
    result = _run_suite("raising", frame, [gx.expectations.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=10)])
    assert not result.success
    assert result.table_failures and "raised" in result.table_failures[0]
    good, bad = split_quarantine(frame, result)
    assert good.empty and len(bad) == 3  # nothing passes a check that could not judge it
    assert all("expect_column_value_lengths_to_be_between(text) raised" in reason for reason in bad["failed_expectations"])
