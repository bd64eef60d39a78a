"""The retraining set, built under contracts: the champion's data replayed plus the new labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from slm_flywheel.data_contracts.contracts import ContractError, split_quarantine, validate_teacher_labels, validate_training_set
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.retrain import in_holdout, retrain_rows
from slm_flywheel.models.router_stats import ROUTER_SOURCE, merge_labels


@dataclass(frozen=True)
class RetrainSet:
    """Where the training set was written, and the teacher labels kept out of it for the gate."""

    path: Path
    rows: int
    new_rows: int
    holdout: pd.DataFrame  # id, text, label, source: the fresh drift slice, never trained on
    quarantined: int
    router_labels: int  # of the new labels (trained on or held out), those the router's frontier gave


@task(cache_policy=NONE)  # reads the live sample store and review queue: a rerun must see what changed
def build_training_set(context: WorkloadContext, champion_training_set: pd.DataFrame, labelled: pd.DataFrame, router_labels: pd.DataFrame, run_tag: str) -> RetrainSet:
    """Teacher labels under their contract (bad rows quarantined), joined by the router's labels
    (already under it: `collect_router_labels`), a held-out drift slice, and the training set
    (replay + new) under its contract. A failed training-set contract stops the run."""
    settings, spec, config = context.settings, context.spec, context.config.relabel
    logger = get_run_logger()
    folder = settings.state_dir / "retrain" / spec.name / run_tag
    folder.mkdir(parents=True, exist_ok=True)
    labels_result = validate_teacher_labels(labelled, spec)
    good, bad = split_quarantine(labelled, labels_result)
    if len(bad):
        bad.to_parquet(folder / "quarantined_teacher_labels.parquet")
        logger.warning("%d teacher labels quarantined: %s", len(bad), ", ".join(labels_result.failed_expectations))
    good = merge_labels(router_labels, good)
    holdout_mask = good["id"].astype(str).map(lambda item_id: in_holdout(item_id, config.holdout_share))
    holdout, new = good[holdout_mask].reset_index(drop=True), good[~holdout_mask]
    training = retrain_rows(champion_training_set[["id", "text", "label"]].astype({"id": str}), new, config)
    result = validate_training_set(training, spec, golden_texts=list(context.splits["golden"]["text"]), min_per_label=config.min_per_label, max_text_chars=settings.serving.max_text_chars)
    create_markdown_artifact(
        key=f"contracts-{spec.name}",
        markdown=f"# Data contracts: {spec.name}\n\n{labels_result.to_markdown()}\n\n{result.to_markdown()}",
        description="great-expectations validation of the teacher labels and the training set",
    )
    if not result.success:
        raise ContractError(result)
    path = folder / "training_set.parquet"
    training.to_parquet(path)
    from_router = int((good["source"] == ROUTER_SOURCE).sum())
    logger.info(
        "%s training set: %d replayed + %d new rows (%d of the new labels from the router; %d held out for the gate)",
        spec.name, len(training) - len(new), len(new), from_router, len(holdout),
    )
    return RetrainSet(path, len(training), len(new), holdout, len(bad), from_router)
