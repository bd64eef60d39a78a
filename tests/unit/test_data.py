import json
from collections import Counter

from slm_flywheel.config import load_settings
from slm_flywheel.models.data import content_hash, load_banking77, load_restaurant8k, sample_training_set, split_dataset, summarize_splits
from slm_flywheel.models.workload import build_task_spec, load_splits

from tests.conftest import REPO

SLOTS = ["people", "time", "date", "first_name", "last_name"]


def test_banking77_splits_are_deterministic_disjoint_and_stratified(data_dir):
    dataset = load_banking77(data_dir)
    first = split_dataset(dataset, validation_fraction=0.05, golden_fraction=0.1, seed=13, stratify=True)
    second = split_dataset(dataset, validation_fraction=0.05, golden_fraction=0.1, seed=13, stratify=True)
    other_seed = split_dataset(dataset, validation_fraction=0.05, golden_fraction=0.1, seed=14, stratify=True)
    ids = {name: set(first[name]["id"]) for name in ("train", "validation", "golden")}
    assert summarize_splits(first) == summarize_splits(second)
    assert summarize_splits(first).data_hash != summarize_splits(other_seed).data_hash
    assert not ids["train"] & ids["golden"] and not ids["train"] & ids["validation"] and not ids["validation"] & ids["golden"]
    assert sum(len(v) for v in ids.values()) == len(dataset)
    # every one of the 77 intents is in golden, in proportion
    golden_counts = Counter(first["golden"]["label"])
    total_counts = Counter(dataset["label"])
    assert len(golden_counts) == 77
    for label, count in golden_counts.items():
        assert abs(count - 0.1 * total_counts[label]) <= 1


def test_restaurant8k_labels_are_spans_of_the_text(data_dir):
    dataset = load_restaurant8k(data_dir, SLOTS)
    assert len(dataset) > 7000
    row = dataset[1]
    assert row["text"].startswith("We will require and outside table")
    assert json.loads(row["label"]) == {"people": "9 people", "date": "August 23rd"}
    for text, label in zip(dataset["text"][:2000], dataset["label"][:2000]):
        slots = json.loads(label)
        assert set(slots) <= set(SLOTS)
        assert all(value and value in text for value in slots.values())


def test_content_hash_changes_with_content(data_dir):
    dataset = load_banking77(data_dir).select(range(50))
    changed = dataset.map(lambda row, i: {"label": "x" if i == 3 else row["label"]}, with_indices=True)
    assert content_hash(dataset) == content_hash(dataset.select(range(50)))
    assert content_hash(dataset) != content_hash(changed)


def test_training_sample_never_touches_golden_and_covers_labels(data_dir):
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    workload = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", workload, data_dir)
    splits = load_splits(spec, workload, data_dir)
    sample = sample_training_set(splits["train"], 770, seed=1, stratify=True)
    assert len(sample) == 770
    assert not set(sample["id"]) & set(splits["golden"]["id"])
    assert set(Counter(sample["label"]).values()) == {10}  # round-robin: 10 per intent
    again = sample_training_set(splits["train"], 770, seed=1, stratify=True)
    assert sample["id"] == again["id"]
