"""Evaluate base, champion and candidate the same way, and let the gate decide."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from slm_flywheel import progress
from slm_flywheel.tracking import log_files, log_metrics
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.evaluation import evaluate_sets
from slm_flywheel.models.gates import GateDecision, ModelEval, decide, gate_eval_sets, model_eval
from slm_flywheel.models.registry import AdapterVersion, download_adapter
from slm_flywheel.models.workload import TaskSpec


def _model_eval(name: str, spec: TaskSpec, base_path: str, adapter: Path | None, golden: Dataset, holdout: pd.DataFrame, batch: int, cache_dir: Path) -> ModelEval:
    report = lambda done, total: progress.report(f"gate: evaluate {name}", done, total)  # noqa: E731
    sets = gate_eval_sets((list(golden["text"]), list(golden["label"])), (list(holdout["text"]), list(holdout["label"])))
    return model_eval(name, evaluate_sets(spec, base_path, adapter, sets, batch, report, cache_dir))


# Evaluations are cached per (spec, base model, adapter files, items) by models/evaluation.py, not by
# a Prefect cache policy: measured over 3 nights of train plus gate (bench/caches.py), 14 model
# evaluations against 21 with Prefect's INPUTS key, which holds the new candidate and so never
# repeats; the per-model key reuses the base and champion on golden, and train-adapter's golden
# evaluation of the candidate.
@task(cache_policy=NONE)  # measured: the per-model evaluation cache above does better
def evaluate_candidate(
    context: WorkloadContext,
    client: Any,
    base_path: str,
    champion: AdapterVersion,
    candidate: AdapterVersion,
    holdout: pd.DataFrame,
) -> GateDecision:
    """Base, champion and candidate on golden and on the held-out drift slice; the decision is
    logged to the candidate's run, set as tags on its version, and published as an artifact."""
    settings, spec, golden = context.settings, context.spec, context.splits["golden"]
    batch, gates = context.config.eval_batch_size, context.config.gates
    cache = settings.eval_cache_dir
    evals = {
        "base": _model_eval("base", spec, base_path, None, golden, holdout, batch, cache),
        "champion": _model_eval("champion", spec, base_path, download_adapter(client, champion, settings.adapters_dir), golden, holdout, batch, cache),
        "candidate": _model_eval("candidate", spec, base_path, download_adapter(client, candidate, settings.adapters_dir), golden, holdout, batch, cache),
    }
    decision = decide(evals["base"], evals["champion"], evals["candidate"], gates)
    log_metrics(client, candidate.run_id, decision.metrics, prefix="gate_")
    for name, model in evals.items():
        log_metrics(client, candidate.run_id, model.drift, prefix=f"gate_{name}_drift_")
        log_metrics(client, candidate.run_id, model.golden, prefix=f"gate_{name}_golden_")
    log_files(client, candidate.run_id, {"gate_decision.json": json.dumps(decision.to_dict(), indent=1)}, "gate")
    client.set_model_version_tag(spec.name, str(candidate.version), "gate_promote", str(decision.promote).lower())
    client.set_model_version_tag(spec.name, str(candidate.version), "gate_reasons", " | ".join(decision.reasons)[:4000])
    client.set_model_version_tag(spec.name, str(candidate.version), "gate_vs_champion", str(champion.version))
    create_markdown_artifact(
        key=f"gate-{spec.name}",
        markdown=f"# Gate: {spec.name} v{candidate.version} vs champion v{champion.version}\n\n"
        f"Drift slice: {len(holdout)} teacher-labelled samples never trained on.\n\n{decision.to_markdown()}",
        description="the promotion gate's decision with every compared number",
    )
    get_run_logger().info("%s gate: %s (%s)", spec.name, "PROMOTE" if decision.promote else "keep champion", "; ".join(decision.reasons))
    return decision
