"""great-expectations data contracts for production samples, teacher labels and training sets.

Checks that GX cannot express per row (a slot value must be a span of its own input, a text must
not appear with two labels, a label needs enough examples) are computed first as boolean or
count columns, and the suite then expects them: every failure is still a named expectation.

Row-level failures quarantine the row with the expectation that failed; table-level failures
(the training set as a whole is unfit) fail the contract, and the flow stops naming them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from slm_flywheel.models.workload import TaskSpec

PRODUCTION_COLUMNS = ["timestamp", "request_id", "workload", "input", "answer", "valid", "confidence", "adapter_version", "latency_ms", "replica_id"]


@dataclass(frozen=True)
class ContractResult:
    """The outcome of one suite on one frame."""

    suite: str
    success: bool
    rows: int
    failed_expectations: list[str]  # "expectation_type(column)" for every failed expectation
    row_failures: dict[int, list[str]] = field(default_factory=dict)  # frame index -> failed expectations
    table_failures: list[str] = field(default_factory=list)  # failures not tied to rows

    def to_markdown(self) -> str:
        verdict = "passed" if self.success else "FAILED"
        lines = [f"### Contract `{self.suite}`: {verdict} on {self.rows} rows", ""]
        if self.failed_expectations:
            lines += ["| failed expectation | rows |", "| --- | --- |"]
            for name in self.failed_expectations:
                count = sum(name in names for names in self.row_failures.values())
                lines.append(f"| `{name}` | {count if count else 'table'} |")
        return "\n".join(lines)


class ContractError(RuntimeError):
    """A suite failed at the table level; the message lists the failed expectations."""

    def __init__(self, result: ContractResult):
        self.result = result
        super().__init__(f"data contract {result.suite!r} failed: " + "; ".join(result.table_failures or result.failed_expectations))


def _span_ok(text: Any, label: Any, slots: tuple[str, ...]) -> bool:
    try:
        answer = json.loads(label)
    except (TypeError, json.JSONDecodeError):
        return False
    return isinstance(answer, dict) and all(
        key in slots and isinstance(value, str) and value and value in str(text) for key, value in answer.items()
    )


def _run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> ContractResult:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas(f"{name}-source").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame.reset_index(drop=True)})
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    outcome = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failed, table = [], []
    rows: dict[int, list[str]] = {}
    index = frame.index
    for result in outcome.results:
        if result.success:
            continue
        config = result.expectation_config
        column = config.kwargs.get("column")
        label = f"{config.type}({column})" if column else config.type
        error = _raised(result)
        if error:  # it could not judge the rows: a failure of the whole table, never a pass
            label = f"{label} raised {error}"
        failed.append(label)
        unexpected = None if error else (result.result or {}).get("unexpected_index_list")
        if unexpected:
            for position in unexpected:
                rows.setdefault(int(index[int(position)]), []).append(label)
        else:
            table.append(label)
    # The suite's own verdict too: a failure this loop did not name still fails the contract.
    if not outcome.success and not failed:
        failed.append("validation failed")
        table.append("validation failed")
    return ContractResult(name, bool(outcome.success) and not failed, len(frame), failed, rows, table)


def _raised(result: Any) -> str | None:
    """The exception an expectation raised while validating, if any (GX reports it, not raises it)."""
    info = result.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message") or "an exception").splitlines()[0][:200]
    return None


def validate_production_samples(frame: pd.DataFrame, spec: TaskSpec, max_text_chars: int) -> ContractResult:
    """Schema, non-empty bounded text input, a finite confidence in [0, 1], unique request ids,
    valid answers in schema."""
    import great_expectations as gx

    missing = [column for column in PRODUCTION_COLUMNS if column not in frame.columns]
    if missing:
        raise ContractError(ContractResult("production_samples", False, len(frame), [f"expect_column_to_exist({c})" for c in missing], {}, [f"expect_column_to_exist({c})" for c in missing]))
    checked = frame.copy()
    # Only text reaches the length expectation (a bytes value would make it raise, not fail a row);
    # only numbers reach the range check, NaN becomes a null (GX's range checks skip nulls).
    checked["input_is_text"] = [isinstance(text, str) for text in frame["input"]]
    checked["input"] = [text if isinstance(text, str) else None for text in frame["input"]]
    checked["confidence"] = pd.to_numeric(frame["confidence"], errors="coerce").astype("float64")
    checked["answer_in_schema"] = [
        (not valid) or (answer in spec.labels if spec.task == "classification" else _span_ok(text, answer, spec.slots))
        for valid, answer, text in zip(checked["valid"], checked["answer"], checked["input"])
    ]
    e = gx.expectations
    return _run_suite(
        "production_samples",
        checked,
        [
            e.ExpectColumnValuesToBeInSet(column="input_is_text", value_set=[True]),
            e.ExpectColumnValuesToNotBeNull(column="input"),
            e.ExpectColumnValueLengthsToBeBetween(column="input", min_value=1, max_value=max_text_chars),
            e.ExpectColumnValuesToNotBeNull(column="confidence"),
            e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
            e.ExpectColumnValuesToBeUnique(column="request_id"),
            e.ExpectColumnValuesToBeInSet(column="workload", value_set=[spec.name]),
            e.ExpectColumnValuesToBeInSet(column="answer_in_schema", value_set=[True]),
        ],
    )


def validate_teacher_labels(frame: pd.DataFrame, spec: TaskSpec) -> ContractResult:
    """Teacher labels (`text`, `label`): present, in the label set / slot schema with spans of the text."""
    import great_expectations as gx

    e = gx.expectations
    checked = frame.copy()
    expectations = [e.ExpectColumnValuesToNotBeNull(column="label"), e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1)]
    if spec.task == "classification":
        expectations.append(e.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.labels)))
    else:
        checked["label_is_slot_json_of_spans"] = [_span_ok(t, label, spec.slots) for t, label in zip(checked["text"], checked["label"])]
        expectations.append(e.ExpectColumnValuesToBeInSet(column="label_is_slot_json_of_spans", value_set=[True]))
    return _run_suite("teacher_labels", checked, expectations)


def validate_training_set(
    frame: pd.DataFrame, spec: TaskSpec, *, golden_texts: Iterable[str], min_per_label: int, max_text_chars: int
) -> ContractResult:
    """The training set: schema, non-empty bounded text, labels in schema, no text with two labels,
    a minimum number of examples per label, and no golden item."""
    import great_expectations as gx

    e = gx.expectations
    checked = frame.copy()
    distinct = checked.groupby("text")["label"].transform("nunique")
    checked["text_has_one_label"] = distinct == 1
    golden = set(golden_texts)
    checked["not_in_golden"] = [text not in golden for text in checked["text"]]
    expectations = [
        e.ExpectColumnValuesToNotBeNull(column="text"),
        e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=max_text_chars),
        e.ExpectColumnValuesToNotBeNull(column="label"),
        e.ExpectColumnValuesToBeInSet(column="text_has_one_label", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="not_in_golden", value_set=[True]),
    ]
    if spec.task == "classification":
        expectations.append(e.ExpectColumnValuesToBeInSet(column="label", value_set=list(spec.labels)))
        counts = checked["label"].value_counts()
        per_label = pd.DataFrame({"label": list(spec.labels), "examples": [int(counts.get(label, 0)) for label in spec.labels]})
    else:
        checked["label_is_slot_json_of_spans"] = [_span_ok(t, label, spec.slots) for t, label in zip(checked["text"], checked["label"])]
        expectations.append(e.ExpectColumnValuesToBeInSet(column="label_is_slot_json_of_spans", value_set=[True]))
        fills = {slot: sum(slot in json.loads(label) for label in checked["label"] if _is_json(label)) for slot in spec.slots}
        per_label = pd.DataFrame({"label": list(fills), "examples": list(fills.values())})
    rows = _run_suite("training_set", checked, expectations)
    coverage = _run_suite("training_set_coverage", per_label, [e.ExpectColumnValuesToBeBetween(column="examples", min_value=min_per_label)])
    table = list(rows.table_failures)
    failed = list(rows.failed_expectations)
    if not coverage.success:
        thin = per_label.iloc[sorted(coverage.row_failures)]["label"].tolist() if coverage.row_failures else []
        name = f"expect_column_values_to_be_between(examples per label >= {min_per_label}; short: {', '.join(thin[:10])}{'…' if len(thin) > 10 else ''})"
        failed.append(name)
        table.append(name)
    return ContractResult("training_set", rows.success and coverage.success, len(frame), failed, rows.row_failures, table)


def _is_json(label: Any) -> bool:
    try:
        json.loads(label)
        return True
    except (TypeError, json.JSONDecodeError):
        return False


def split_quarantine(frame: pd.DataFrame, result: ContractResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows that passed, rows that failed with a `failed_expectations` column): nothing is dropped.

    Fails closed: when an expectation failed for the table as a whole (it raised, or is not tied
    to rows), no row is known to pass it, so every row is quarantined naming it.
    """
    bad_index = [i for i in frame.index if i in result.row_failures or result.table_failures]
    bad = frame.loc[bad_index].copy()
    bad["failed_expectations"] = [", ".join(result.row_failures.get(i, []) + result.table_failures) for i in bad_index]
    bad["suite"] = result.suite
    return frame.drop(index=bad_index), bad
