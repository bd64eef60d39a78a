"""The `rollback-guard` flow: undo a promotion that made things worse, in the registry and in serving."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from slm_flywheel.flows.promote import promote
from slm_flywheel.config import load_settings
from slm_flywheel.tracking import mlflow_client
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.guard import GuardDecision, decide_rollback
from slm_flywheel.models.promotion import ROLLED_BACK
from slm_flywheel.tasks.guard import measure_live_signals, recent_promotion, served_by


@dataclass(frozen=True)
class GuardCheck:
    """The guard on one workload: whether it checked a promotion, and its verdict."""

    workload: str
    checked: bool  # False: no recent promotion to check
    trip: bool = False  # the champion was rolled back
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, workload: str, decision: GuardDecision) -> GuardCheck:
        return cls(workload, True, decision.trip, decision.reasons, decision.evidence)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@flow(name="rollback-guard")
def rollback_guard(config_path: str | None = None, workloads: list[str] | None = None) -> dict[str, GuardCheck]:
    """For every workload whose champion was promoted recently:

    1. find the promotion (history) and the previous champion
    2. measure live signals of the new champion since the promotion, and of the previous one before it
       (confidence, invalid answers, agreement with the teacher on a budgeted audit)
    3. decide (`models/guard.py`); on a trip with enough samples: tag the bad version
       `rolled_back` with the reason and evidence, and promote the previous champion back
       (registry and every serving replica, in one transaction). A rolled-back version is never
       promoted again automatically.
    """
    settings = load_settings(config_path)
    client = mlflow_client(settings)
    results: dict[str, GuardCheck] = {}
    for workload in workloads or list(settings.workloads):
        context = resolve_workload(settings, workload)
        config = context.config.guard
        entry = recent_promotion(client, workload, config)
        if entry is None:
            results[workload] = GuardCheck(workload, False, reasons=["no recent promotion"])
            continue
        promoted_at = datetime.fromisoformat(entry.at)
        baseline = measure_live_signals(context, entry.from_version, served_by(settings, workload, entry.from_version, until=promoted_at), config.audit_budget)
        live = measure_live_signals(context, entry.to_version, served_by(settings, workload, entry.to_version, since=promoted_at), config.audit_budget)
        decision = decide_rollback(baseline, live, config)
        create_markdown_artifact(
            key=f"rollback-guard-{workload}",
            markdown=f"# Rollback guard: {workload} v{entry.to_version} vs v{entry.from_version}\n\n"
            f"**{'ROLL BACK' if decision.trip else 'keep'}**: " + "; ".join(decision.reasons)
            + "\n\n```json\n" + json.dumps(decision.evidence, indent=1, default=str) + "\n```",
            description="live signals of the new champion against the previous one",
        )
        results[workload] = GuardCheck.of(workload, decision)
        if decision.trip:
            reason = "; ".join(decision.reasons)
            client.set_model_version_tag(workload, str(entry.to_version), ROLLED_BACK, reason[:4000])
            client.set_model_version_tag(workload, str(entry.to_version), "rolled_back_evidence", json.dumps(decision.evidence, default=str)[:4000])
            promote(workload=workload, version=entry.from_version, reviewer="rollback-guard", reason=f"rollback of v{entry.to_version}: {reason}", config_path=config_path, evidence=decision.evidence, action="rollback")
            get_run_logger().warning("%s: rolled back v%d -> v%d (%s)", workload, entry.to_version, entry.from_version, reason)
    return results
