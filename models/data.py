"""Dataset loaders and deterministic splits.

Every example has the columns `id` (stable row number in the source file), `text` and `label`.
For classification `label` is the intent name; for extraction it is the canonical JSON of the
slots (`{"people": "4", "time": "7pm"}`, keys in schema order, values spans of `text`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

SPLITS = ("train", "validation", "golden")


class DataError(ValueError):
    """A dataset file is missing or does not have the expected shape."""


def canonical_slots(slots: dict[str, str], slot_order: list[str]) -> str:
    """The one JSON spelling of a slot dict used for training targets and comparison."""
    ordered = {name: slots[name] for name in slot_order if name in slots}
    return json.dumps(ordered, ensure_ascii=False)


def banking77_labels(data_dir: Path) -> list[str]:
    path = data_dir / "banking77" / "categories.json"
    if not path.exists():
        raise DataError(f"Banking77 label set not found at {path}")
    return list(json.loads(path.read_text()))


def load_banking77(data_dir: Path) -> Dataset:
    """Banking77 `train.csv` as (id, text, label)."""
    path = data_dir / "banking77" / "train.csv"
    if not path.exists():
        raise DataError(f"Banking77 not found at {path} (set FLYWHEEL_DATA_DIR)")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"text", "category"} <= set(rows[0]):
        raise DataError(f"{path} must have the columns text, category")
    return Dataset.from_dict(
        {
            "id": list(range(len(rows))),
            "text": [row["text"].strip() for row in rows],
            "label": [row["category"] for row in rows],
        }
    )


def load_restaurant8k(data_dir: Path, slots: list[str]) -> Dataset:
    """Restaurant-8k `train.json` as (id, text, label=canonical slot JSON); input is the text alone."""
    path = data_dir / "restaurant8k" / "train.json"
    if not path.exists():
        raise DataError(f"Restaurant-8k not found at {path} (set FLYWHEEL_DATA_DIR)")
    records = json.loads(path.read_text())
    ids, texts, labels = [], [], []
    for index, record in enumerate(records):
        text = record["userInput"]["text"]
        found: dict[str, str] = {}
        for item in record.get("labels", []):
            if item["slot"] not in slots:
                continue
            span = item["valueSpan"]
            # The README: end is exclusive and a missing start means 0.
            found.setdefault(item["slot"], text[span.get("startIndex", 0) : span["endIndex"]])
        ids.append(index)
        texts.append(text)
        labels.append(canonical_slots(found, slots))
    return Dataset.from_dict({"id": ids, "text": texts, "label": labels})


def split_dataset(
    dataset: Dataset, *, validation_fraction: float, golden_fraction: float, seed: int, stratify: bool
) -> DatasetDict:
    """Deterministic, disjoint train / validation / golden splits.

    With `stratify`, every label keeps its share in each split (at least one golden and one
    validation example where the label has three or more).
    """
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(dataset["label"]):
        groups[label if stratify else ""].append(index)
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        n_golden = round(len(members) * golden_fraction)
        n_validation = round(len(members) * validation_fraction)
        if stratify and len(members) >= 3:
            n_golden, n_validation = max(n_golden, 1), max(n_validation, 1)
        chosen["golden"] += members[:n_golden]
        chosen["validation"] += members[n_golden : n_golden + n_validation]
        chosen["train"] += members[n_golden + n_validation :]
    return DatasetDict({name: dataset.select(sorted(chosen[name])) for name in SPLITS})


def content_hash(dataset: Dataset) -> str:
    """sha256 over (id, text, label) rows: identical data gives the identical hash."""
    digest = hashlib.sha256()
    for row_id, text, label in zip(dataset["id"], dataset["text"], dataset["label"]):
        digest.update(f"{row_id}\x1f{text}\x1f{label}\x1e".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitSummary:
    """Split sizes and content hashes, recorded with every training run."""

    sizes: dict[str, int]
    hashes: dict[str, str]

    @property
    def data_hash(self) -> str:
        joined = "".join(self.hashes[name] for name in SPLITS)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]


def summarize_splits(splits: DatasetDict) -> SplitSummary:
    return SplitSummary(
        sizes={name: len(splits[name]) for name in SPLITS},
        hashes={name: content_hash(splits[name]) for name in SPLITS},
    )


def sample_training_set(train: Dataset, max_examples: int, seed: int, stratify: bool) -> Dataset:
    """At most `max_examples` rows of `train`, spread over labels when `stratify` (round-robin)."""
    if len(train) <= max_examples:
        return train.shuffle(seed=seed)
    rng = random.Random(seed)
    if not stratify:
        picked = rng.sample(range(len(train)), max_examples)
        return train.select(picked)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(train["label"]):
        groups[label].append(index)
    queues = []
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        queues.append(members)
    picked: list[int] = []
    while len(picked) < max_examples:
        for queue in queues:
            if queue and len(picked) < max_examples:
                picked.append(queue.pop())
    rng.shuffle(picked)
    return train.select(picked)
