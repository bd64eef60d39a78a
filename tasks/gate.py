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
from slm_flywheel.config import Settings
from slm_flywheel.tracking import log_files, log_metrics
from slm_flywheel.models.evaluation import EvalSet, evaluate_sets
from slm_flywheel.models.gates import GateDecision, ModelEval, decide
from slm_flywheel.models.registry import AdapterVersion, download_adapter
from slm_flywheel.models.workload import TaskSpec


# Latency is compared on items every model answers now, back to back in this task, never from
# the evaluation cache (a stored result was timed under whatever else ran then): the drift slice
# (new every night), topped up with golden items when it has fewer than LATENCY_PROBE_MIN, in
# batches of LATENCY_BATCH (several batches: a p95 over several measurements, not one).
LATENCY_PROBE_MIN = 32
LATENCY_BATCH = 8


def _model_eval(name: str, spec: TaskSpec, base_path: str, adapter: Path | None, golden: Dataset, holdout: pd.DataFrame, batch: int, cache_dir: Path) -> ModelEval:
    report = lambda done, total: progress.report(f"gate: evaluate {name}", done, total)  # noqa: E731
    drift = EvalSet(list(holdout["text"]), list(holdout["label"]), LATENCY_BATCH, cached=False)
    sets = {"golden": EvalSet(list(golden["text"]), list(golden["label"])), "drift": drift}
    if len(holdout) < LATENCY_PROBE_MIN:
        head = golden[: LATENCY_PROBE_MIN - len(holdout)]  # a dict of columns
        sets["latency"] = drift._replace(texts=drift.texts + list(head["text"]), references=drift.references + list(head["label"]))
    results = evaluate_sets(spec, base_path, adapter, sets, batch, report, cache_dir)
    golden_result, drift_result = results["golden"], results["drift"]
    return ModelEval(
        name=name,
        golden=golden_result.metrics,
        golden_breakdown=golden_result.breakdown,
        drift=drift_result.metrics,
        drift_correct=drift_result.correct,
        latency_p95_ms=results.get("latency", drift_result).metrics.get("latency_p95_ms", 0.0),
    )


@task(cache_policy=NONE)  # evaluations are cached per (adapter, split) by models/evaluation.py across runs
def evaluate_candidate(
    settings: Settings,
    client: Any,
    spec: TaskSpec,
    base_path: str,
    champion: AdapterVersion,
    candidate: AdapterVersion,
    golden: Dataset,
    holdout: pd.DataFrame,
) -> GateDecision:
    """Base, champion and candidate on golden and on the held-out drift slice; the decision is
    logged to the candidate's run, set as tags on its version, and published as an artifact."""
    batch = settings.workload(spec.name).eval_batch_size
    gates = settings.workload(spec.name).gates
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
