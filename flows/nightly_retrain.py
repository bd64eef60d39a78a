"""The `nightly-retrain` flow: notice that the champion falls behind on today's traffic and fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from slm_flywheel.flows.promote import SMOKE_INPUTS, promote
from slm_flywheel.flows.train_adapter import train_adapter_flow
from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.context import WorkloadContext, load_workload
from slm_flywheel.models.registry import get_version
from slm_flywheel.models.router_stats import RouterFigures
from slm_flywheel.tasks.costs import publish_cost_ledger
from slm_flywheel.tasks.dataset import build_training_set
from slm_flywheel.tasks.drift import build_reference, detect_drift_in_window
from slm_flywheel.tasks.gate import evaluate_candidate
from slm_flywheel.tasks.guard import measure_router
from slm_flywheel.tasks.locks import workload_lock
from slm_flywheel.tasks.relabel import collect_router_labels, relabel_with_teacher, select_samples
from slm_flywheel.tasks.samples import advance_watermark, load_new_samples
from slm_flywheel.tasks.training import pull_base_model


@dataclass
class NightlySummary:
    """What one run did; `flywheel nightly --json` prints it."""

    workload: str
    window_size: int = 0
    quarantined: int = 0
    quarantined_files: list[str] = field(default_factory=list)  # "<path>: <reason>", moved aside unread
    carried_over: bool = False  # too few samples to test: the same files come back next night
    drift_detected: bool = False
    drift_reason: str = ""
    router: list[RouterFigures] = field(default_factory=list)  # the window's routing, per UTC day and version
    router_labels: int = 0  # new labels the router's frontier gave (free: the teacher was not asked)
    router_labels_quarantined: int = 0
    relabeled: int = 0
    teacher: str = ""
    teacher_cost: float = 0.0
    teacher_cached: int = 0
    to_review: int = 0
    training_rows: int = 0
    holdout_size: int = 0
    champion_version: int | None = None
    candidate_version: int | None = None
    promote: bool | None = None
    gate_reasons: list[str] = field(default_factory=list)
    gate_metrics: dict[str, float] = field(default_factory=dict)
    promotion: str = ""  # what happened after the gate: promoted, awaiting review, kept
    promoted_version: int | None = None
    drift_tests: list[dict] = field(default_factory=list)
    champion_drift_accuracy: float | None = None
    candidate_drift_accuracy: float | None = None
    data_hash: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@flow(name="nightly-retrain")
def nightly_retrain(workload: str, force: bool = False, budget: int | None = None, config_path: str | None = None) -> NightlySummary:
    """Drift → relabel → contracts → retrain → gate → promote, for one workload.

    1. load the samples captured since the last run; rows failing the contract, and files that
       cannot be read, are quarantined with the reason; the router's figures on the rest (frontier
       share, latency, spend, wrong-path rate, label-free accuracy) go into the summary
    2. detect drift against the champion's reference; no drift → stop here (unless `force`); a
       window too small to test is carried over to the next run
    3. the router's frontier answers (served, or audits) become labels under the teacher-label
       contract, free; then select up to `budget` informative samples among the rest and have the
       teacher label them (cached, budgeted; a share goes to human review)
    4. build the training set (champion's data + new labels) under data contracts, keeping a
       held-out part of the new labels for the gate
    5. retrain with the `train-adapter` subflow: the candidate becomes `challenger`
    6. gate: base, champion and candidate on golden and on the held-out drift slice
    7. on a gate pass, by the workload's `promotion` policy: `auto` runs the `promote` subflow
       (champion alias, push to every replica, all or nothing); `review` leaves the candidate
       `challenger`, tagged `awaiting_review`, for a reviewer
    8. the cost ledger of the last days, with tonight's teacher calls and training: a markdown
       artifact and daily metrics in MLflow
    One run per workload at a time (the workload's `retrain` lock).
    """
    context = load_workload(workload, config_path)
    with workload_lock("retrain", workload):
        summary = _nightly(context, force, budget, config_path)
    # Costs
    publish_cost_ledger(context, mlflow_client(context.settings), datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"))
    return summary


def _nightly(context: WorkloadContext, force: bool, budget: int | None, config_path: str | None) -> NightlySummary:
    # The subflows (train-adapter, promote) take `config_path`: their parameters stay serializable.
    settings, workload, config = context.settings, context.name, context.config
    client = mlflow_client(settings)
    summary = NightlySummary(workload)
    run_tag = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    # Samples
    window = load_new_samples(context)
    summary.window_size, summary.quarantined = len(window.samples), window.quarantined
    summary.quarantined_files = [f"{moved.path}: {moved.reason}" for moved in window.quarantined_files]
    summary.router = measure_router(context, window.samples)
    # Drift
    base_path = pull_base_model(settings)
    champion = build_reference(context, client, base_path)
    summary.champion_version = champion.version.version
    report, embeddings = detect_drift_in_window(context, client, window, champion)
    summary.drift_detected, summary.drift_reason = report.drifted, report.reason
    summary.drift_tests = report.to_dict().get("tests", [])
    if not (report.drifted or force):
        # A window too small to test is not a quiet one: its samples are tested with the next.
        summary.carried_over = report.insufficient
        if not report.insufficient:
            advance_watermark(settings, window)
        return summary
    # Relabel: the router's frontier answers first (free), the teacher only for samples without one
    router_labels = collect_router_labels(context, window.samples, run_tag)
    summary.router_labels_quarantined = router_labels.quarantined
    selected = select_samples(window.samples, embeddings, champion.reference.embeddings, budget if budget is not None else config.relabel.budget, labelled=router_labels.labelled)
    labels = relabel_with_teacher(context, selected, run_tag)
    summary.relabeled, summary.teacher, summary.teacher_cost = labels.valid, labels.teacher, labels.cost_usd
    summary.teacher_cached, summary.to_review = labels.cached, labels.to_review
    # Contracts
    retrain_set = build_training_set(context, champion.training_set, labels.labelled, router_labels.labelled, run_tag)
    summary.training_rows, summary.holdout_size, summary.router_labels = retrain_set.rows, len(retrain_set.holdout), retrain_set.router_labels
    # Train
    warm_start = str(champion.adapter_dir) if config.relabel.retrain_mode == "warm_start" else None
    candidate = train_adapter_flow(workload=workload, config_path=config_path, training_set_path=str(retrain_set.path), warm_start_adapter=warm_start)
    summary.candidate_version, summary.data_hash = candidate.version, candidate.data_hash
    # Gate
    decision = evaluate_candidate(context, client, base_path, champion.version, get_version(client, workload, version=candidate.version), retrain_set.holdout)
    summary.promote, summary.gate_reasons, summary.gate_metrics = decision.promote, decision.reasons, dict(decision.metrics)
    summary.champion_drift_accuracy = decision.metrics.get("champion_drift_headline")
    summary.candidate_drift_accuracy = decision.metrics.get("candidate_drift_headline")
    advance_watermark(settings, window)  # these samples are used: a failed push does not replay them
    # Promote
    if not decision.promote:
        summary.promotion = "kept the champion: the gate did not pass"
    elif config.promotion == "review":
        client.set_model_version_tag(workload, str(candidate.version), "awaiting_review", "; ".join(decision.reasons)[:4000])
        summary.promotion = (
            f"awaiting review: v{candidate.version} is challenger; promote it with `flywheel promote {workload} {candidate.version} --reviewer <you>`, "
            "the `promote` deployment, or the `champion` alias in the MLflow UI"
        )
    else:
        promote(workload=workload, version=candidate.version, reviewer="nightly-retrain (auto)", reason="; ".join(decision.reasons), config_path=config_path, evidence=decision.metrics, smoke_texts=context.golden_texts(SMOKE_INPUTS))
        summary.promotion, summary.promoted_version = f"promoted v{candidate.version} and pushed it to every replica", candidate.version
    get_run_logger().info("nightly-retrain %s: %s", workload, summary.to_dict())
    return summary
