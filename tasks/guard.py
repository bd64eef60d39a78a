"""Live-signal tasks: find recent promotions, measure live signals, audit with the teacher, and
the router's honesty figures (the rollback guard and the nightly summary both report them)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from slm_flywheel.config import GuardConfig, Settings
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.guard import Audit, LiveSignals, audit_answers
from slm_flywheel.models.promotion import HistoryEntry, history
from slm_flywheel.models.registry import CHAMPION, alias_version
from slm_flywheel.models.router_stats import RouterFigures, router_figures, router_table
from slm_flywheel.models.teacher import TeacherItem
from slm_flywheel.models.usage import audit_path, record_audit
from slm_flywheel.serving.capture import read_samples
from slm_flywheel.tasks.relabel import build_teacher, label_with_cache


@task(cache_policy=NONE)  # reads the live registry: a stored answer would be stale
def recent_promotion(client: Any, workload: str, config: GuardConfig) -> HistoryEntry | None:
    """The promotion that made the current champion, if it is recent and has a predecessor."""
    champion = alias_version(client, workload, CHAMPION)
    if champion is None:  # nothing registered or no champion yet: nothing to guard
        return None
    entries = [e for e in history(client, workload) if e.action == "promote" and e.from_version is not None]
    if not entries or entries[-1].to_version != champion.version:
        return None
    entry = entries[-1]
    if datetime.fromisoformat(entry.at) < datetime.now(timezone.utc) - timedelta(hours=config.recent_hours):
        return None
    return entry


def served_by(settings: Settings, workload: str, version: int, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Captured answers of one version of `workload` (optionally within a time range)."""
    frame = read_samples(settings.samples_dir, workload, start=since, end=until)
    return frame[frame["adapter_version"] == f"{workload}@v{version}"].reset_index(drop=True)


@task(cache_policy=NONE)  # live samples change; audits pay the teacher through the per-text label cache, which the nightly relabel shares (see relabel_with_teacher)
def measure_live_signals(context: WorkloadContext, version: int, samples: pd.DataFrame, audit_budget: int, seed: int = 0) -> LiveSignals:
    """Confidence, invalid share, agreement with the teacher on a budgeted audit sample, and the
    router's figures over these samples (wrong-path rate on its audits, label-free accuracy)."""
    settings, spec = context.settings, context.spec
    valid = samples[samples["valid"]]
    audit_result = Audit(0, 0)
    if audit_budget and len(valid):
        audit = valid.sample(n=min(audit_budget, len(valid)), random_state=seed)
        teacher = build_teacher(context, "audit")
        items = [TeacherItem(str(r), str(t)) for r, t in zip(audit["request_id"], audit["input"])]
        run, _ = label_with_cache(teacher, items, settings.state_dir / "teacher-labels" / spec.name)
        audit_result = audit_answers(spec, list(audit["answer"]), [label.label if label.valid else None for label in run.labels])
        # the ledger's served-vs-frontier accuracy
        record_audit(audit_path(settings.state_dir, spec.name), spec.name, version, audit_result.audited, audit_result.agreed)
        get_run_logger().info("%s v%d audit by %s: %d answers, agreement %s", spec.name, version, teacher.name, audit_result.audited, audit_result.agreement)
    return LiveSignals(
        version=version,
        confidences=valid["confidence"].to_numpy(dtype=np.float64),
        invalid=int((~samples["valid"]).sum()),
        total=len(samples),
        agreement=audit_result.agreement,
        audited=audit_result.audited,
        router=next(iter(router_figures(samples, spec, by_day=False)), None),
    )


@task(cache_policy=NONE)  # publishes an artifact of this run's samples: a stored result would skip it
def measure_router(context: WorkloadContext, samples: pd.DataFrame) -> list[RouterFigures]:
    """The router's figures for these samples, per UTC day and version, as a markdown artifact."""
    figures = router_figures(samples, context.spec)
    if figures:
        create_markdown_artifact(
            key=f"router-{context.name}",
            markdown=f"# Router: {context.name}\n\n{router_table(figures)}\n\nWrong-path rate: audited small-model answers that differ from "
            "the frontier's (Wilson 95% interval). Label-free accuracy: mean calibrated confidence of the answers the small model served.",
            description="frontier share, latency and spend; wrong-path rate and label-free accuracy",
        )
        get_run_logger().info("%s router:\n%s", context.name, router_table(figures))
    return figures
