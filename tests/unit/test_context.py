"""The workload context: resolved once, with one data-dir rule, the dataset read on first use."""

from pathlib import Path

import pytest

from slm_flywheel.config import ConfigError, load_settings
from slm_flywheel.models.context import data_dir_for, load_workload, resolve_workload

REPO = Path(__file__).resolve().parents[2]


def test_the_data_dir_is_required_only_when_the_spec_or_the_splits_read_the_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_DATA_DIR", raising=False)
    settings = load_settings(REPO / "flywheel.yaml")
    assert settings.data_dir is None
    slots = resolve_workload(settings, "restaurant-slots")
    assert slots.spec.slots[0] == "people"  # its own slots: no data dir needed
    with pytest.raises(ConfigError, match="data_dir is not set"):
        slots.splits  # noqa: B018
    banking = resolve_workload(settings, "banking-intent")  # labels come from the dataset
    with pytest.raises(ConfigError, match="data_dir is not set"):
        banking.spec  # noqa: B018
    missing = settings.model_copy(update={"data_dir": tmp_path / "nowhere"})
    assert data_dir_for(missing, slots.config, splits=False) is None
    with pytest.raises(ConfigError, match="is not a directory"):
        data_dir_for(missing, slots.config, splits=True)


def test_an_unknown_workload_is_named():
    with pytest.raises(ConfigError, match="unknown workload 'nope'.*banking-intent"):
        load_workload("nope", REPO / "flywheel.yaml")


def test_spec_and_splits_are_built_once_and_golden_texts_come_from_the_golden_split(data_dir):
    context = load_workload("restaurant-slots", REPO / "flywheel.yaml")
    assert context.settings.data_dir == data_dir
    assert context.spec is context.spec and context.splits is context.splits
    assert context.golden_texts(3) == list(context.splits["golden"]["text"][:3])
    assert len(context.golden_texts(3)) == 3


def test_with_max_examples_changes_the_config_and_the_settings_alike():
    context = load_workload("restaurant-slots", REPO / "flywheel.yaml")
    small = context.with_max_examples(7)
    assert small.config.training.max_examples == 7
    assert small.settings.workload("restaurant-slots").training.max_examples == 7
    assert context.config.training.max_examples != 7  # the original is untouched
