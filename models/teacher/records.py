"""What a teacher is given and returns: items, labels, a run's account, the `Teacher` protocol, and the checks and log line both teachers share."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol


if TYPE_CHECKING:
    from slm_flywheel.models.workload import TaskSpec


logger = logging.getLogger("flywheel.teacher")

# `TeacherLabel.reason` values; a failed call's reason is "failed: <what went wrong>".
OK = "ok"
FAILED = "failed"  # the prefix of a failed call's reason
OUT_OF_SCHEMA = "out_of_schema"
BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True)
class TeacherItem:
    """One production sample to label."""

    item_id: str
    text: str


@dataclass(frozen=True)
class TeacherLabel:
    """The teacher's answer for one item.

    `label` is the intent (classification) or the canonical slot JSON (extraction) and is set
    exactly when `valid`. `reason` is "ok", "out_of_schema", "budget_exhausted", "failed: <why>"
    (a call that got no usable response) or, from the SIMULATED teacher only, "no_ground_truth".
    `cost_usd` is the item's share of the calls it took part in (0 when cached).
    """

    item_id: str
    label: str | None
    valid: bool
    reason: str
    cost_usd: float
    cached: bool
    teacher: str

    @property
    def failed(self) -> bool:
        """The call for this item got no usable response (a transport failure, not an answer)."""
        return self.reason.startswith(FAILED)

    def __post_init__(self) -> None:
        # An invalid item must never carry something that could end up in a training set.
        if self.valid != (self.label is not None):
            raise ValueError(f"item {self.item_id!r}: a label is set exactly when it is valid")


@dataclass(frozen=True)
class TeacherRun:
    """One `Teacher.label` run: one label per input item, in input order, and what it cost."""

    labels: list[TeacherLabel]
    calls: int  # calls sent to the API; the SDK's retries of a call are not counted again
    cached_calls: int  # calls answered from the on-disk cache, for free
    cost_usd: float
    budget_usd: float
    prompt_tokens: int  # paid tokens only: cache hits add none
    completion_tokens: int


class Teacher(Protocol):
    """Labels items within the workload's schema and a per-run budget."""

    name: str

    def label(self, items: list[TeacherItem]) -> TeacherRun: ...

    def worst_case_cost_usd(self, items: list[TeacherItem]) -> float:
        """The most labelling `items` in one call can cost (what a spend cap reserves)."""
        ...



def check_spec(spec: TaskSpec) -> None:
    if spec.task == "classification" and not spec.labels:
        raise ValueError(f"workload {spec.name!r}: a classification teacher needs `labels`")
    if spec.task == "extraction" and not spec.slots:
        raise ValueError(f"workload {spec.name!r}: an extraction teacher needs `slots`")


def check_unique_ids(items: list[TeacherItem]) -> None:
    repeated = [item_id for item_id, count in Counter(item.item_id for item in items).items() if count > 1]
    if repeated:
        raise ValueError(f"item ids must be unique within a run; repeated: {repeated[:5]}")



def log_run(name: str, run: TeacherRun) -> None:
    reasons = Counter(FAILED if label.failed else label.reason for label in run.labels)
    logger.info(
        "%s: %d of %d items labelled, %d out of schema, %d over budget, %d failed; %d calls (+%d cached), $%.4f of $%.2f",
        name,
        reasons[OK],
        len(run.labels),
        reasons[OUT_OF_SCHEMA],
        reasons[BUDGET_EXHAUSTED],
        reasons[FAILED],
        run.calls,
        run.cached_calls,
        run.cost_usd,
        run.budget_usd,
    )
