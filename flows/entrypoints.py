"""The flows `prefect.yaml` deploys: the same flows, with only the parameters a person sets in the
Prefect UI's run form, each described, and the workload chosen from a list.

The flows in the sibling modules keep the parameters their callers need (`config_path` for the
command line, `evidence` and `action` from the rollback guard, the training set and warm start
from the nightly run); each flow here runs that flow's body (`.fn`) inside its own run, so a
deployment run is one flow run with the same name and the same tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from prefect import flow
from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from slm_flywheel.flows import drift_check as drift_check_module
from slm_flywheel.flows import nightly_retrain as nightly_module
from slm_flywheel.flows import promote as promote_module
from slm_flywheel.flows import rollback_guard as rollback_guard_module
from slm_flywheel.flows import sync_serving as sync_serving_module
from slm_flywheel.flows import train_adapter as train_adapter_module
from slm_flywheel.flows.drift_check import DriftCheck
from slm_flywheel.flows.nightly_retrain import NightlySummary
from slm_flywheel.flows.promote import Promotion
from slm_flywheel.flows.rollback_guard import GuardCheck
from slm_flywheel.flows.sync_serving import WorkloadSync
from slm_flywheel.config import ConfigError, Settings, load_settings
from slm_flywheel.tasks.training import RegisteredAdapter


class _ConfiguredChoices:
    """JSON schema of a name from flywheel.yaml (or `$FLYWHEEL_CONFIG`): an enum of what `names`
    reads from the settings, read when the schema is built (`prefect deploy`), never at import."""

    def __init__(self, names: Callable[[Settings], list[str]]) -> None:
        self.names = names

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        try:
            names = self.names(load_settings())
        except ConfigError:  # no readable configuration here: free text, and the run names a wrong one
            names = []
        if names:
            json_schema["enum"] = names
        return json_schema


def _training_profiles(settings: Settings) -> list[str]:
    """"default" and every profile some workload defines (the run checks its workload has it)."""
    return ["default", *sorted({name for workload in settings.workloads.values() for name in workload.training_profiles})]


Workload = Annotated[str, _ConfiguredChoices(lambda settings: sorted(settings.workloads))]
TrainingProfile = Annotated[str, _ConfiguredChoices(_training_profiles)]


@flow(name="nightly-retrain")
def nightly_retrain(workload: Workload, force: bool = False, budget: int | None = None) -> NightlySummary:
    """Drift → relabel → contracts → retrain → gate → promote, for one workload.

    Args:
        workload: The workload to check and, on drift, retrain (one adapter per workload).
        force: Relabel and retrain even when the drift tests find nothing.
        budget: How many captured samples the teacher labels in this run; empty: the workload's
            `relabel.budget` from flywheel.yaml.
    """
    return nightly_module.nightly_retrain.fn(workload=workload, force=force, budget=budget)


@flow(name="drift-check")
def drift_check(workload: Workload) -> DriftCheck:
    """Run the drift tests on the samples captured since the last retrain (moves no watermark).

    Args:
        workload: The workload whose captured traffic is compared with its champion's reference.
    """
    return drift_check_module.drift_check.fn(workload=workload)


@flow(name="promote")
def promote(workload: Workload, version: int, reviewer: str, reason: str = "reviewer approval") -> Promotion:
    """Make a registered version the champion and serve it on every replica, all or nothing.

    Args:
        workload: The workload whose champion changes.
        version: The MLflow registry version to promote (the candidate's number, e.g. from the
            `awaiting review` line of a nightly run).
        reviewer: Who approves the promotion; kept in the champion's history.
        reason: Why it is promoted; kept in the champion's history.
    """
    return promote_module.promote.fn(workload=workload, version=version, reviewer=reviewer, reason=reason)


@flow(name="sync-serving")
def sync_serving(workloads: list[Workload] | None = None) -> dict[str, WorkloadSync]:
    """Make every serving replica serve the registry's champion (adopting a move made in the MLflow UI).

    Args:
        workloads: Only these workloads; empty: every configured workload.
    """
    return sync_serving_module.sync_serving.fn(workloads=workloads)


@flow(name="rollback-guard")
def rollback_guard(workloads: list[Workload] | None = None) -> dict[str, GuardCheck]:
    """Compare recently promoted champions with the previous ones; roll back a clear degradation.

    Args:
        workloads: Only these workloads; empty: every configured workload.
    """
    return rollback_guard_module.rollback_guard.fn(workloads=workloads)


@flow(name="train-adapter")
def train_adapter(workload: Workload, max_examples: int | None = None, launch: bool = False, profile: TrainingProfile = "default") -> RegisteredAdapter:
    """Train, evaluate on golden and register a LoRA adapter (`champion` if there is none, else `challenger`).

    Args:
        workload: The workload to train an adapter for.
        max_examples: Training examples at most; empty: the workload's `training.max_examples`.
        launch: Train on the launch data, which under-represents the items later traffic favours
            (the demo's launch champion).
        profile: A training profile from the workload's `training_profiles` (e.g. "full": every
            non-golden row, more epochs); "default" is its `training` block.
    """
    return train_adapter_module.train_adapter_flow.fn(workload=workload, max_examples=max_examples, launch=launch, profile=profile)
