"""The human review queue for teacher labels.

A share of every run's teacher labels (and every label the teacher could not give inside the
schema) waits here for a person: `flywheel review list|accept|correct`. Reviewed labels are used
from the next run on; the teacher-reviewer agreement rate is what lets a run trust the teacher.
Stored as one JSON file per workload, rewritten atomically (review volumes are small).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from slm_flywheel.files import atomic_write
from slm_flywheel.models.workload import TaskSpec

if TYPE_CHECKING:
    from slm_flywheel.models.teacher import TeacherLabel

SAMPLED = "spot_check"  # a random share of valid teacher labels
OUT_OF_SCHEMA = "out_of_schema"  # the teacher could not answer inside the schema


class ReviewError(ValueError):
    """An unknown item, an item already reviewed, or a correction outside the schema."""


@dataclass(frozen=True)
class ReviewItem:
    item_id: str
    workload: str
    text: str
    teacher_label: str | None
    teacher: str
    reason: str  # SAMPLED or OUT_OF_SCHEMA
    run_id: str
    created_at: str
    status: str = "pending"  # pending | accepted | corrected
    final_label: str | None = None
    reviewer: str | None = None
    reviewed_at: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ReviewQueue:
    def __init__(self, root: Path, workload: str):
        self.path = root / f"{workload}.json"
        self.workload = workload

    def items(self) -> list[ReviewItem]:
        if not self.path.exists():
            return []
        return [ReviewItem(**row) for row in json.loads(self.path.read_text())]

    def _save(self, items: list[ReviewItem]) -> None:
        atomic_write(self.path, json.dumps([asdict(item) for item in items], indent=1, ensure_ascii=False))

    def enqueue(self, new: list[ReviewItem]) -> int:
        """Add items not queued before (by item id); returns how many were added."""
        items = self.items()
        known = {item.item_id for item in items}
        fresh = [item for item in new if item.item_id not in known]
        self._save(items + fresh)
        return len(fresh)

    def pending(self) -> list[ReviewItem]:
        return [item for item in self.items() if item.status == "pending"]

    def _review(self, item_id: str, reviewer: str, label: str | None, spec: TaskSpec) -> ReviewItem:
        items = self.items()
        for position, item in enumerate(items):
            if item.item_id != item_id:
                continue
            if item.status != "pending":
                raise ReviewError(f"{item_id} was already reviewed ({item.status} by {item.reviewer})")
            if label is None:
                if item.teacher_label is None:
                    raise ReviewError(f"{item_id} has no teacher label to accept; use `correct` with a label")
                updated = replace(item, status="accepted", final_label=item.teacher_label, reviewer=reviewer, reviewed_at=_now())
            else:
                check_label(spec, item.text, label)
                status = "accepted" if label == item.teacher_label else "corrected"
                updated = replace(item, status=status, final_label=label, reviewer=reviewer, reviewed_at=_now())
            items[position] = updated
            self._save(items)
            return updated
        raise ReviewError(f"no review item {item_id!r} for {self.workload}")

    def accept(self, item_id: str, reviewer: str, spec: TaskSpec) -> ReviewItem:
        return self._review(item_id, reviewer, None, spec)

    def correct(self, item_id: str, label: str, reviewer: str, spec: TaskSpec) -> ReviewItem:
        return self._review(item_id, reviewer, label, spec)

    def reviewed_labels(self) -> list[tuple[str, str, str]]:
        """(item_id, text, label) for every reviewed item: training data from the next run on."""
        return [(i.item_id, i.text, i.final_label) for i in self.items() if i.status != "pending" and i.final_label is not None]

    def agreement(self) -> tuple[float | None, int]:
        """Share of reviewed spot checks where the reviewer kept the teacher's label, and how many."""
        checked = [item for item in self.items() if item.reason == SAMPLED and item.status != "pending"]
        if not checked:
            return None, 0
        return sum(item.status == "accepted" for item in checked) / len(checked), len(checked)


def check_label(spec: TaskSpec, text: str, label: str) -> None:
    """Raise ReviewError unless `label` is inside the workload's schema for `text`."""
    if spec.task == "classification":
        if label not in spec.labels:
            raise ReviewError(f"{label!r} is not one of the {len(spec.labels)} labels of {spec.name}")
        return
    try:
        answer = json.loads(label)
    except json.JSONDecodeError as exc:
        raise ReviewError(f"{label!r} is not a JSON object: {exc.msg}") from exc
    if not isinstance(answer, dict):
        raise ReviewError("an extraction label must be a JSON object of slot -> value")
    for key, value in answer.items():
        if key not in spec.slots:
            raise ReviewError(f"{key!r} is not a slot of {spec.name} ({', '.join(spec.slots)})")
        if not isinstance(value, str) or not value or value not in text:
            raise ReviewError(f"the value of {key!r} must be a non-empty span of the text")


def spot_check_sample(item_ids: list[str], share: float, seed: int) -> set[str]:
    """A reproducible `share` of the items (at least one when there are any and share > 0)."""
    if not item_ids or share <= 0:
        return set()
    count = max(1, round(len(item_ids) * share))
    return set(random.Random(seed).sample(sorted(item_ids), min(count, len(item_ids))))


def review_items(workload: str, labels: Sequence[TeacherLabel], texts: Mapping[str, str], teacher: str, spot: set[str], run_tag: str, now: str) -> list[ReviewItem]:
    """What a run sends to review: its spot-checked valid labels, and every answer the teacher
    could not give inside the schema (a person labels those)."""
    items = [ReviewItem(l.item_id, workload, texts[l.item_id], l.label, teacher, SAMPLED, run_tag, now) for l in labels if l.valid and l.item_id in spot]
    items += [ReviewItem(l.item_id, workload, texts[l.item_id], None, teacher, OUT_OF_SCHEMA, run_tag, now) for l in labels if l.reason == OUT_OF_SCHEMA]
    return items


def training_labels(valid: Sequence[TeacherLabel], texts: Mapping[str, str], reviewed: list[tuple[str, str, str]]) -> pd.DataFrame:
    """The labelled rows (id, text, label) a run trains on: the teacher's valid labels, except where
    a reviewer has since said otherwise, plus every reviewed label from earlier runs."""
    reviewed_labels = {item_id: (text, label) for item_id, text, label in reviewed}
    rows = [(l.item_id, texts[l.item_id], reviewed_labels.pop(l.item_id, (None, l.label))[1]) for l in valid]
    rows += [(item_id, text, label) for item_id, (text, label) in reviewed_labels.items()]
    return pd.DataFrame(rows, columns=["id", "text", "label"])
