"""A workload resolved once: its settings, configuration, task spec and splits, side by side.

A flow resolves its workload at the top (`load_workload`) and hands the context, or its parts, to
its tasks; nothing below looks the workload up again from its name. The spec and the splits are
built on first use, so a flow that never reads the dataset never needs the data directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict

from slm_flywheel.config import Settings, TrainingConfig, WorkloadConfig, load_settings
from slm_flywheel.models.workload import TaskSpec, build_task_spec, load_splits


def spec_reads_dataset(config: WorkloadConfig) -> bool:
    """A classification workload without its own `labels` takes its label set from the dataset."""
    return config.task == "classification" and not config.labels


def data_dir_for(settings: Settings, config: WorkloadConfig, splits: bool) -> Path | None:
    """The one data-dir rule: required (named error when missing) exactly when the spec or the
    splits read the dataset; otherwise not looked at."""
    if splits or spec_reads_dataset(config):
        return settings.require_data_dir()
    return None


@dataclass
class WorkloadContext:
    """One workload, resolved: `spec` and `splits` are built once, on first use."""

    settings: Settings
    name: str
    config: WorkloadConfig
    _spec: TaskSpec | None = field(default=None, repr=False)
    _splits: DatasetDict | None = field(default=None, repr=False)

    @property
    def spec(self) -> TaskSpec:
        if self._spec is None:
            self._spec = build_task_spec(self.name, self.config, data_dir_for(self.settings, self.config, splits=False))
        return self._spec

    @property
    def splits(self) -> DatasetDict:
        """Train / validation / golden, split deterministically (models/data.py)."""
        if self._splits is None:
            self._splits = load_splits(self.spec, self.config, data_dir_for(self.settings, self.config, splits=True))
        return self._splits

    def with_max_examples(self, max_examples: int) -> WorkloadContext:
        """The same workload training on at most `max_examples` (settings updated to match)."""
        return self._with_training(self.config.training.model_copy(update={"max_examples": max_examples}))

    def with_training_profile(self, profile: str) -> WorkloadContext:
        """The same workload training with profile `profile` (`training_profiles`; "default": unchanged)."""
        return self._with_training(self.config.training_for(profile))

    def _with_training(self, training: TrainingConfig) -> WorkloadContext:
        config = self.config.model_copy(update={"training": training})
        settings = self.settings.model_copy(update={"workloads": {**self.settings.workloads, self.name: config}})
        return WorkloadContext(settings, self.name, config, self._spec, self._splits)

    def golden_texts(self, count: int) -> list[str]:
        """The first `count` golden inputs (never trained on): what a replica must answer before it serves."""
        return list(self.splits["golden"]["text"][:count])


def resolve_workload(settings: Settings, name: str, spec: TaskSpec | None = None) -> WorkloadContext:
    """The context of workload `name` (an unknown name is a `ConfigError` that lists the known ones).

    `spec`: a task spec already built for it (one is built from the config on first use otherwise).
    """
    return WorkloadContext(settings=settings, name=name, config=settings.workload(name), _spec=spec)


def load_workload(name: str, config_path: str | Path | None = None) -> WorkloadContext:
    """Load the settings (flywheel.yaml plus environment) and resolve workload `name` in them."""
    return resolve_workload(load_settings(config_path), name)
