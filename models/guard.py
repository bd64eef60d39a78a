"""The rollback guard's decision: is a freshly promoted champion worse live than the one before?

A pure function over two `LiveSignals` (the new champion since its promotion; the previous
champion's baseline) returning a `GuardDecision`. It trips only with enough samples on both
sides, and only on a clear, significant degradation of one of the signals:
* confidence: the distribution moved down (one-sided KS, D over a threshold);
* invalid answers: the share of answers outside the schema grew;
* teacher agreement: on a small budgeted audit, the new champion agrees with the teacher less.
The router's figures for each side (wrong-path rate on its audits, label-free accuracy estimate,
frontier share; `models/router_stats.py`) go into the evidence; they do not decide a trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from slm_flywheel.config import GuardConfig
from slm_flywheel.models.router_stats import RouterFigures
from slm_flywheel.models.workload import TaskSpec


@dataclass(frozen=True)
class LiveSignals:
    """What one version did in production."""

    version: int
    confidences: np.ndarray  # of valid answers
    invalid: int
    total: int
    agreement: float | None = None  # share of audited answers equal to the teacher's
    audited: int = 0
    router: RouterFigures | None = None  # over the same samples; None when none was routed


@dataclass(frozen=True)
class GuardDecision:
    trip: bool
    enough_samples: bool
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Audit:
    """Served answers compared with the teacher's: how many it could judge, how many agreed."""

    audited: int
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.audited if self.audited else None


def audit_answers(spec: TaskSpec, answers: list[str], teacher_labels: list[str | None]) -> Audit:
    """Compare served answers with the teacher's labels (None: the teacher gave no valid one, not
    counted). Extraction answers are compared as slot dicts, so slot order does not matter."""
    parse = spec.parse_label if spec.task == "extraction" else (lambda text: text)
    pairs = [(parse(answer), parse(label)) for answer, label in zip(answers, teacher_labels) if label is not None]
    return Audit(len(pairs), sum(answer == label for answer, label in pairs))


ROUTER_EVIDENCE = ("frontier_share", "wrong_path_rate", "wrong_path_low", "wrong_path_high", "audited_agreement", "label_free_accuracy")


def _router_evidence(figures: RouterFigures | None, side: str) -> dict[str, Any]:
    """`router_<figure>_<side>` for each of ROUTER_EVIDENCE, and how many answers were audited."""
    if figures is None:
        return {}
    return {f"router_{name}_{side}": getattr(figures, name) for name in ROUTER_EVIDENCE} | {f"router_audited_{side}": figures.audited}


def decide_rollback(baseline: LiveSignals, live: LiveSignals, config: GuardConfig) -> GuardDecision:
    """Compare the new champion's live signals with the previous champion's baseline."""
    from scipy.stats import fisher_exact, ks_2samp

    evidence: dict[str, Any] = {"baseline_version": baseline.version, "live_version": live.version, "baseline_total": baseline.total, "live_total": live.total}
    evidence.update(_router_evidence(baseline.router, "baseline") | _router_evidence(live.router, "live"))
    if min(baseline.total, live.total) < config.min_samples:
        return GuardDecision(False, False, [f"waiting for samples: {live.total} live, {baseline.total} baseline (need {config.min_samples})"], evidence)
    reasons: list[str] = []
    if len(baseline.confidences) and len(live.confidences):
        # One-sided: does the live CDF sit above the baseline's, i.e. are confidences lower?
        test = ks_2samp(live.confidences, baseline.confidences, alternative="greater")
        evidence.update(confidence_ks=float(test.statistic), confidence_p=float(test.pvalue),
                        confidence_mean_live=float(np.mean(live.confidences)), confidence_mean_baseline=float(np.mean(baseline.confidences)))
        if test.pvalue < config.alpha and test.statistic >= config.confidence_ks_threshold:
            reasons.append(f"confidence fell: KS D={test.statistic:.3f} (p={test.pvalue:.2g}), mean {np.mean(baseline.confidences):.3f} -> {np.mean(live.confidences):.3f}")
    base_share, live_share = baseline.invalid / baseline.total, live.invalid / live.total
    _, p_invalid = fisher_exact([[live.invalid, live.total - live.invalid], [baseline.invalid, baseline.total - baseline.invalid]], alternative="greater")
    evidence.update(invalid_share_live=live_share, invalid_share_baseline=base_share, invalid_p=float(p_invalid))
    if p_invalid < config.alpha and live_share - base_share >= config.invalid_share_increase:
        reasons.append(f"invalid answers rose: {base_share:.1%} -> {live_share:.1%} (p={p_invalid:.2g})")
    if live.agreement is not None and baseline.agreement is not None and min(live.audited, baseline.audited) >= config.min_audited:
        agree_live, agree_base = round(live.agreement * live.audited), round(baseline.agreement * baseline.audited)
        _, p_agree = fisher_exact([[live.audited - agree_live, agree_live], [baseline.audited - agree_base, agree_base]], alternative="greater")
        evidence.update(agreement_live=live.agreement, agreement_baseline=baseline.agreement, agreement_p=float(p_agree))
        if p_agree < config.alpha and baseline.agreement - live.agreement >= config.agreement_drop:
            reasons.append(f"teacher agreement fell: {baseline.agreement:.1%} -> {live.agreement:.1%} on {live.audited} audited answers (p={p_agree:.2g})")
    return GuardDecision(bool(reasons), True, reasons or ["no signal degraded past its threshold"], evidence)
