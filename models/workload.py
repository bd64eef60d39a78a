"""A workload's task specification: prompt, completion format and output schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from datasets import DatasetDict

from slm_flywheel.config import WorkloadConfig
from slm_flywheel.models.data import banking77_labels, load_banking77, load_restaurant8k, split_dataset

Answer = str | dict[str, str]


@dataclass(frozen=True)
class TaskSpec:
    """What a workload's adapter reads and writes; shared by training, inference and evaluation."""

    name: str
    task: Literal["classification", "extraction"]
    prompt_template: str
    labels: tuple[str, ...] = ()
    slots: tuple[str, ...] = ()

    def prompt(self, text: str) -> str:
        return self.prompt_template.replace("{text}", text)

    def completion(self, label: str) -> str:
        """The training target for `label` (the intent name, or the canonical slot JSON).

        A leading space because the prompt ends with a colon, as the model saw in pre-training.
        """
        return " " + label

    def parse_label(self, label: str) -> Answer:
        return json.loads(label) if self.task == "extraction" else label

    def parse_stored_answers(self, answers: list[Any]) -> list[Answer | None]:
        """Captured answers (label, slot JSON text, or None for an invalid one) as answers."""
        return [self.parse_label(answer) if isinstance(answer, str) else None for answer in answers]

    def answer_to_label(self, answer: Answer) -> str:
        if self.task == "extraction":
            assert isinstance(answer, dict)
            return json.dumps({name: answer[name] for name in self.slots if name in answer}, ensure_ascii=False)
        assert isinstance(answer, str)
        return answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "prompt_template": self.prompt_template,
            "labels": list(self.labels),
            "slots": list(self.slots),
        }


def build_task_spec(name: str, workload: WorkloadConfig, data_dir: Path | None) -> TaskSpec:
    """A `TaskSpec` from a `WorkloadConfig`; the Banking77 label set is read from the data dir."""
    labels: tuple[str, ...] = ()
    if workload.task == "classification":
        if workload.labels:
            labels = tuple(workload.labels)
        elif workload.dataset == "banking77":
            if data_dir is None:
                raise ValueError(f"workload {name!r} takes its labels from the dataset: set data_dir")
            labels = tuple(banking77_labels(data_dir))
        else:
            raise ValueError(f"workload {name!r} needs `labels`")
    return TaskSpec(
        name=name,
        task=workload.task,
        prompt_template=workload.prompt_template,
        labels=labels,
        slots=tuple(workload.slots or ()),
    )


def load_splits(spec: TaskSpec, workload: WorkloadConfig, data_dir: Path) -> DatasetDict:
    """The workload's dataset, split deterministically into train / validation / golden."""
    if workload.dataset == "banking77":
        dataset = load_banking77(data_dir)
        unknown = set(dataset["label"]) - set(spec.labels)
        if unknown:
            dataset = dataset.filter(lambda row: row["label"] in spec.labels)
    else:
        dataset = load_restaurant8k(data_dir, list(spec.slots))
    return split_dataset(
        dataset,
        validation_fraction=workload.splits.validation_fraction,
        golden_fraction=workload.splits.golden_fraction,
        seed=workload.splits.seed,
        stratify=spec.task == "classification",
    )
