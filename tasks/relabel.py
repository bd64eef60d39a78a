"""Labels for the nightly retrain: the router's frontier answers first (free), then the teacher's
for the informative samples still unlabelled, under budget and review."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from slm_flywheel.data_contracts.contracts import split_quarantine, validate_teacher_labels
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.drift import WindowEmbeddings
from slm_flywheel.models.frontier import FrontierClient
from slm_flywheel.models.review import ReviewQueue, review_items, spot_check_sample, training_labels
from slm_flywheel.models.router_stats import AUDIT, FALLBACK, router_label_rows, unlabelled_mask
from slm_flywheel.models.selection import select_informative
from slm_flywheel.models.teacher import Teacher, TeacherItem, TeacherLabel, TeacherRun
from slm_flywheel.models.teacher.build import frontier_client, teacher_for
from slm_flywheel.models.usage import Purpose


class TeacherDistrustError(RuntimeError):
    """Reviewers disagree with the teacher too often: its labels must not be trained on."""


class FrontierOutage(RuntimeError):
    """Some teacher calls still failed after the client's own retries: Prefect retries the task later."""


RELABEL_RETRIES = 2


def _frontier_outage(task: object, run: object, state: object) -> bool:
    """Prefect's retry condition: retry an outage, never a distrusted teacher, a contract or a bug."""
    return isinstance(state.result(raise_on_failure=False), FrontierOutage)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RelabelResult:
    """The teacher's labels for the selected samples, and what they cost."""

    labelled: pd.DataFrame  # id, text, label (valid teacher labels, plus reviewed labels)
    teacher: str
    selected: int
    valid: int
    to_review: int
    cost_usd: float
    cached: int
    agreement: float | None


def _api_key(context: WorkloadContext) -> str | None:
    """The key from the workload's Prefect Secret block, if it names one (else the env var)."""
    block = context.config.teacher.api_key_block
    if not block:
        return None  # the client reads `api_key_env` and names it when it is missing
    from prefect.blocks.system import Secret

    return Secret.load(block).get()


def build_frontier_client(context: WorkloadContext) -> FrontierClient:
    """The workload's frontier model (`teacher.kind: openai`), its key from the environment or a
    Prefect Secret block, its price from `costs.frontier_prices`."""
    return frontier_client(context, _api_key(context))


def build_teacher(context: WorkloadContext, purpose: Purpose) -> Teacher:
    """The configured teacher: the SIMULATED one (offline, demo) or an OpenAI-compatible API.

    Every call it pays is appended to the workload's usage log with `purpose` (relabel or audit).
    """
    api_key = _api_key(context) if context.config.teacher.kind == "openai" else None
    return teacher_for(context, purpose, budget_usd=context.config.relabel.budget_usd, api_key=api_key)


@dataclass(frozen=True)
class RouterLabels:
    """The window's labels from the router's frontier that passed the teacher-label contract."""

    labelled: pd.DataFrame  # id, text, label, source ("router"), kind (fallback or audit)
    fallback: int  # of them, answers the frontier served
    audit: int  # of them, the frontier's answers to audited small-model answers
    quarantined: int  # failed the contract: set aside with the expectation, not trained on


@task(cache_policy=NONE)  # writes the quarantined rows of this run: a rerun must write its own
def collect_router_labels(context: WorkloadContext, samples: pd.DataFrame, run_tag: str) -> RouterLabels:
    """The frontier's answers in the window (served to callers, or audits of the small model) as
    labels under the teacher-label contract; failing rows go to the run's quarantine with the
    expectation they failed. Collected before the teacher is asked, so it never pays for them."""
    settings, spec = context.settings, context.spec
    logger = get_run_logger()
    rows = router_label_rows(samples)
    if not len(rows):
        logger.info("%s: no frontier answers in the window", spec.name)
        return RouterLabels(rows, 0, 0, 0)
    result = validate_teacher_labels(rows, spec)
    good, bad = split_quarantine(rows, result)
    if len(bad):
        folder = settings.state_dir / "retrain" / spec.name / run_tag
        folder.mkdir(parents=True, exist_ok=True)
        bad.to_parquet(folder / "quarantined_router_labels.parquet")
        logger.warning("%s: %d router labels quarantined: %s", spec.name, len(bad), ", ".join(result.failed_expectations))
    good = good.reset_index(drop=True)
    fallback, audit = int((good["kind"] == FALLBACK).sum()), int((good["kind"] == AUDIT).sum())
    logger.info("%s: %d labels from the router's frontier (%d served, %d audits), free", spec.name, len(good), fallback, audit)
    return RouterLabels(good, fallback, audit, len(bad))


@task(cache_policy=NONE)  # a pure, seeded choice over in-memory frames: cheaper to redo than to hash its inputs
def select_samples(
    samples: pd.DataFrame, embeddings: WindowEmbeddings, reference: np.ndarray, budget: int, seed: int = 0, labelled: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Up to `budget` informative samples (uncertain, novel, deduplicated, spread out) among the
    window rows the drift check embedded (all of them up to its `max_embedded`), leaving out the
    requests and texts `labelled` already has a label for (the router's frontier answers)."""
    if not len(samples):
        return samples
    candidates = samples.iloc[embeddings.positions]
    vectors = embeddings.vectors
    if labelled is not None and len(labelled):
        keep = unlabelled_mask(candidates, labelled)
        candidates, vectors = candidates[keep], vectors[keep]
    selection = select_informative(list(candidates["input"]), vectors, candidates["confidence"].to_numpy(), reference, budget, seed=seed)
    get_run_logger().info(
        "selected %d of %d distinct samples for the teacher (%d of the window's %d rows embedded and without a label)",
        len(selection.indices), selection.candidates, len(candidates), len(samples),
    )
    return candidates.iloc[selection.indices].reset_index(drop=True)


def _cache_key(teacher: str, text: str) -> str:
    return hashlib.sha256(json.dumps([teacher, text]).encode()).hexdigest()


def label_with_cache(teacher: Teacher, items: list[TeacherItem], cache_dir: Path) -> tuple[TeacherRun, int]:
    """Answers the teacher gave before (same teacher, same text) come from disk for free.

    This is what makes a rerun after a crash cost nothing twice, whatever the teacher (the
    OpenAI-compatible one also caches whole calls; this cache works per item, for any teacher).
    Returns the run (labels in item order) and how many items came from the cache.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached: dict[str, TeacherLabel] = {}
    fresh: list[TeacherItem] = []
    for item in items:
        path = cache_dir / f"{_cache_key(teacher.name, item.text)}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            cached[item.item_id] = TeacherLabel(item.item_id, stored["label"], stored["valid"], stored["reason"], 0.0, True, teacher.name)
        else:
            fresh.append(item)
    run = teacher.label(fresh) if fresh else TeacherRun([], 0, 0, 0.0, 0.0, 0, 0)
    texts = {item.item_id: item.text for item in fresh}
    for label in run.labels:
        # Budget and transport failures are not answers: they are asked again next time.
        if label.valid or label.reason == "out_of_schema":
            path = cache_dir / f"{_cache_key(teacher.name, texts[label.item_id])}.json"
            path.write_text(json.dumps({"label": label.label, "valid": label.valid, "reason": label.reason}))
    by_id = {label.item_id: label for label in run.labels}
    labels = [cached.get(item.item_id) or by_id[item.item_id] for item in items]
    return replace(run, labels=labels), len(cached)


# Labels are cached per (teacher, text) by `label_with_cache`, not by a Prefect cache policy: measured
# over 200 items (bench/caches.py, bench/RESULTS.md), Prefect's INPUTS key pays all 200 again when
# the flow is rerun (a new run tag), pays 300 against 200 when the frontier drops halfway, and
# shares nothing with the rollback guard's audit (25 of 40 audited texts selected again: 240
# calls against 215); an identical rerun is free either way.
# Retried by Prefect only for a frontier outage (the openai SDK has already retried each call):
# the retry pays only for the items the outage left unlabelled; the last attempt goes on with them.
@task(cache_policy=NONE, retries=RELABEL_RETRIES, retry_delay_seconds=[60, 300], retry_condition_fn=_frontier_outage)  # measured: see above
def relabel_with_teacher(context: WorkloadContext, selected: pd.DataFrame, run_tag: str) -> RelabelResult:
    """Label the selected samples; spot checks and out-of-schema answers go to the review queue."""
    settings, spec, config = context.settings, context.spec, context.config.relabel
    queue = ReviewQueue(settings.state_dir / "review", spec.name)
    agreement, reviewed = queue.agreement()
    if agreement is not None and reviewed >= config.min_reviews_for_agreement and agreement < config.agreement_floor:
        raise TeacherDistrustError(
            f"teacher-reviewer agreement is {agreement:.2f} over {reviewed} spot checks, below the floor "
            f"{config.agreement_floor}: refusing to train on teacher labels (review more items or fix the teacher)"
        )
    logger = get_run_logger()
    teacher = build_teacher(context, "relabel")
    items = [TeacherItem(str(rid), str(text)) for rid, text in zip(selected["request_id"], selected["input"])]
    run, from_cache = label_with_cache(teacher, items, settings.state_dir / "teacher-labels" / spec.name)
    failed = [label for label in run.labels if label.failed]
    if failed and 0 < task_run.run_count <= RELABEL_RETRIES:
        raise FrontierOutage(
            f"{teacher.name}: {len(failed)} of {len(items)} items failed ({failed[0].reason}); "
            f"the {len(items) - len(failed)} answered are kept for the retry"
        )
    simulated = "SIMULATED" in teacher.name
    prefix = "[SIMULATED teacher] " if simulated else ""
    logger.info(
        "%s%s labelled %d items: %d valid, cost $%.4f (%d answers from cache, no charge)",
        prefix, teacher.name, len(items), sum(label.valid for label in run.labels), run.cost_usd, from_cache,
    )
    texts = dict(zip(map(str, selected["request_id"]), map(str, selected["input"])))
    valid = [label for label in run.labels if label.valid]
    spot = spot_check_sample([label.item_id for label in valid], config.review_share, seed=int(hashlib.sha256(run_tag.encode()).hexdigest()[:8], 16))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    queued = queue.enqueue(review_items(spec.name, run.labels, texts, teacher.name, spot, run_tag, now))
    labelled = training_labels(valid, texts, queue.reviewed_labels())
    return RelabelResult(labelled, teacher.name, len(items), len(valid), queued, run.cost_usd, from_cache, agreement)
