"""The promotion gate: a pure function from evaluations to a `GateDecision`.

The candidate is promoted only when all of these hold, each recorded as a check:
1. it beats the champion on the held-out drift slice by at least `min_delta` (headline metric),
   and the win is significant under an exact McNemar test on the paired per-item outcomes;
2. it loses at most `max_golden_drop` on the golden split;
3. no label or slot with at least `min_slice_support` golden examples drops by more than
   `max_slice_regression` (F1);
4. its p95 latency is within `max_latency_factor` of the champion's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import comb
from typing import TYPE_CHECKING, Any

from slm_flywheel.config import GateConfig

if TYPE_CHECKING:  # evaluation imports torch; the decision itself stays a light, pure module
    from slm_flywheel.models.evaluation import EvalResult, EvalSet

# Latency is compared on items every model answers now, back to back in the gate, never from
# the evaluation cache (a stored result was timed under whatever else ran then): the drift slice
# (new every night), topped up with golden items when it has fewer than LATENCY_PROBE_MIN, in
# batches of LATENCY_BATCH (several batches: a p95 over several measurements, not one).
LATENCY_PROBE_MIN = 32
LATENCY_BATCH = 8


@dataclass(frozen=True)
class ModelEval:
    """One model's evaluation on the two sets the gate reads."""

    name: str  # base | champion | candidate
    golden: dict[str, float]
    golden_breakdown: dict[str, dict[str, float]]
    drift: dict[str, float]
    drift_correct: list[bool]  # per drift-slice item, in a fixed order shared by all models
    latency_p95_ms: float


def gate_eval_sets(golden: tuple[list[str], list[str]], drift: tuple[list[str], list[str]]) -> dict[str, EvalSet]:
    """What the gate evaluates each model on: golden (cached), the drift slice and, when that slice
    is smaller than LATENCY_PROBE_MIN, a latency probe topped up with golden items (both timed now)."""
    from slm_flywheel.models.evaluation import EvalSet

    drift_set = EvalSet(*drift, LATENCY_BATCH, cached=False)
    sets = {"golden": EvalSet(*golden), "drift": drift_set}
    missing = LATENCY_PROBE_MIN - len(drift_set.texts)
    if missing > 0:
        sets["latency"] = drift_set._replace(texts=drift_set.texts + golden[0][:missing], references=drift_set.references + golden[1][:missing])
    return sets


def model_eval(name: str, results: dict[str, EvalResult]) -> ModelEval:
    """A model's `ModelEval` from its results on `gate_eval_sets` (latency: the probe, else the drift slice)."""
    golden, drift = results["golden"], results["drift"]
    return ModelEval(
        name=name,
        golden=golden.metrics,
        golden_breakdown=golden.breakdown,
        drift=drift.metrics,
        drift_correct=drift.correct,
        latency_p95_ms=results.get("latency", drift).metrics.get("latency_p95_ms", 0.0),
    )


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    checks: list[GateCheck]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"## Gate: {'PROMOTE' if self.promote else 'keep the champion'}", "", "| check | passed | detail |", "| --- | --- | --- |"]
        lines += [f"| {c.name} | {'yes' if c.passed else 'NO'} | {c.detail} |" for c in self.checks]
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(self.metrics.items())]
        return "\n".join(lines)


def mcnemar_exact(champion_correct: list[bool], candidate_correct: list[bool]) -> tuple[int, int, float]:
    """One-sided exact McNemar: (b = only the candidate right, c = only the champion right, p).

    p is P(X >= b) for X ~ Binomial(b + c, 1/2): the chance of a win this large if neither model
    were better on the items where they disagree.
    """
    if len(champion_correct) != len(candidate_correct):
        raise ValueError("paired outcomes must have the same length")
    b = sum(cand and not champ for champ, cand in zip(champion_correct, candidate_correct))
    c = sum(champ and not cand for champ, cand in zip(champion_correct, candidate_correct))
    n = b + c
    if n == 0:
        return b, c, 1.0
    p = sum(comb(n, k) for k in range(b, n + 1)) / 2**n
    return b, c, p


def headline(metrics: dict[str, float]) -> float:
    return metrics.get("accuracy", metrics.get("slot_f1", 0.0))


def decide(base: ModelEval | None, champion: ModelEval, candidate: ModelEval, gates: GateConfig) -> GateDecision:
    """Apply the workload's `GateConfig` to three evaluations (base is logged, not gated on)."""
    checks: list[GateCheck] = []
    drift_gain = headline(candidate.drift) - headline(champion.drift)
    b, c, p_value = mcnemar_exact(champion.drift_correct, candidate.drift_correct)
    checks.append(GateCheck("drift slice: improvement >= min_delta", drift_gain >= gates.min_delta, f"{headline(champion.drift):.4f} -> {headline(candidate.drift):.4f} ({drift_gain:+.4f}, need {gates.min_delta:+.4f})"))
    checks.append(GateCheck("drift slice: McNemar p < alpha", p_value < gates.alpha, f"candidate-only right {b}, champion-only right {c}, p={p_value:.4g}, alpha={gates.alpha}"))
    golden_change = headline(candidate.golden) - headline(champion.golden)
    checks.append(GateCheck("golden: drop <= max_golden_drop", golden_change >= -gates.max_golden_drop, f"{headline(champion.golden):.4f} -> {headline(candidate.golden):.4f} ({golden_change:+.4f}, allowed -{gates.max_golden_drop})"))
    regressions = []
    for name, values in champion.golden_breakdown.items():
        if values.get("support", 0) < gates.min_slice_support:
            continue
        after = candidate.golden_breakdown.get(name, {}).get("f1", 0.0)
        if values["f1"] - after > gates.max_slice_regression:
            regressions.append(f"{name} {values['f1']:.2f}->{after:.2f}")
    checks.append(GateCheck("no slice regresses past max_slice_regression", not regressions, ", ".join(regressions) or f"none with support >= {gates.min_slice_support}"))
    factor = candidate.latency_p95_ms / champion.latency_p95_ms if champion.latency_p95_ms else 1.0
    checks.append(GateCheck("p95 latency within max_latency_factor", factor <= gates.max_latency_factor, f"{champion.latency_p95_ms:.1f} ms -> {candidate.latency_p95_ms:.1f} ms (x{factor:.2f}, allowed x{gates.max_latency_factor})"))

    metrics: dict[str, float] = {"drift_gain": drift_gain, "mcnemar_p": p_value, "golden_change": golden_change, "latency_factor": factor}
    for model in (base, champion, candidate):
        if model is None:
            continue
        metrics[f"{model.name}_golden_headline"] = headline(model.golden)
        metrics[f"{model.name}_drift_headline"] = headline(model.drift)
        metrics[f"{model.name}_latency_p95_ms"] = model.latency_p95_ms
    failed = [f"{check.name}: {check.detail}" for check in checks if not check.passed]
    reasons = failed or [f"candidate beats champion on the drift slice by {drift_gain:+.4f} (p={p_value:.3g}) with no regression"]
    return GateDecision(promote=not failed, reasons=reasons, checks=checks, metrics=metrics)
