"""Calibrated confidence and the routing threshold a version travels with.

A small model's answer probability (the product of its constrained tokens' probabilities) ranks
answers well but is not a probability of being right: a fine-tuned model is over-confident. On
the validation split (never trained on) `calibrate` fits a monotone map from that probability to
the chance the answer is correct, isotonic regression (sklearn) or temperature scaling of its
logit, and measures the expected calibration error (ECE) before and after; the "after" figure is
cross-fitted (each fold scored by a map fitted on the others) so it is not flattered by the fit.

For a classifier the answer itself says something the probability does not: the model mistakes
unfamiliar inputs (rare intents, and under prior shift many of them) for a few familiar labels,
whose answers are then right less often than their probability suggests. Given each item's
answer, `calibrate` also fits a log-odds offset per answer: the answer's accuracy on validation
against the calibrated confidence of its items, shrunk towards no offset by `prior_strength`
pseudo-items (empirical Bayes with a Beta prior at the calibrated confidence), the strength chosen
among `PRIOR_STRENGTHS` by cross-fitted log loss on validation (none at all, when that fits best).

The routing threshold comes from the risk-coverage curve of the calibrated confidence: the
lowest threshold at which the answers the small model would keep (calibrated confidence at or
above it) are still right at least `target_accuracy` of the time on validation, i.e. the largest
share the small model can serve at the target. Below it, a request goes to the frontier. "Right
at least `target_accuracy` of the time" is read with `bound_confidence` (default 0.95): the
one-sided Clopper-Pearson lower bound of the kept answers' accuracy must reach the target, not
their point estimate. A point estimate on a few hundred validation items picks a threshold that
misses the target about half the time on fresh traffic, and further under shift: on
`bench/router.py`'s prior-shift traffic the point-estimate threshold for 0.90 served 0.862, the
bound's 0.912 (with 1.24x the oracle's frontier share; bench/RESULTS.md, `--quick`).

The calibrator and the threshold are written as `calibration.json` into the adapter's folder, so
they are registered, downloaded, promoted and rolled back with the adapter itself.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

CALIBRATION_FILE = "calibration.json"
Method = Literal["isotonic", "temperature"]
_EPS = 1e-6  # keeps logits finite for probabilities of exactly 0 or 1
# The live fit's confidences are clipped to [_LIVE_EPS, 1 - _LIVE_EPS] before the log-odds. The
# isotonic calibrator gives its top bin exactly 1.0: at _EPS those answers sit at log-odds 13.8, far
# beyond every other label, and the two-parameter fit flattens to reach them. On bench/router's full
# traffic it then put the small model at 0.52-0.68 where agreement showed 0.65-0.99 (confidence
# 0.9-0.999), and the threshold it picked served 1.7 points over the target at a 1.51x-oracle share
# (100 audit draws); clipped at 1e-3 (log-odds 6.9), 0.7 points over at 1.45x (bench/RESULTS.md,
# Router). A window of a few thousand labels cannot tell a confidence of 0.9999 from 0.999 anyway.
_LIVE_EPS = 1e-3
# Pseudo-items an answer's validation record is shrunk with: from barely (1) to not at all (inf).
PRIOR_STRENGTHS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, math.inf)


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from answer probability to the probability the answer is correct.

    isotonic: piecewise-linear through (`knots_x`, `knots_y`), flat beyond the ends;
    temperature: sigmoid(logit(p) / `temperature`). With `answer_offsets`, an item whose answer
    has one gets it added to the log-odds of that (answers it lacks: none).
    """

    method: Method
    temperature: float = 1.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    answer_offsets: dict[str, float] = field(default_factory=dict)

    def apply(self, confidence: Sequence[float] | np.ndarray, answers: Sequence[Any] | None = None) -> np.ndarray:
        """Calibrated confidences, in [0, 1], in the input's order; `answers` (one per item) for the offsets."""
        p = np.clip(np.asarray(confidence, dtype=float), 0.0, 1.0)
        calibrated = np.interp(p, self.knots_x, self.knots_y) if self.method == "isotonic" else _sigmoid(_logit(p) / self.temperature)
        if answers is None or not self.answer_offsets:
            return calibrated
        if len(answers) != len(p):
            raise ValueError(f"{len(answers)} answers for {len(p)} confidences")
        offsets = np.array([self.answer_offsets.get(a, 0.0) if isinstance(a, str) else 0.0 for a in answers])
        return np.where(offsets == 0.0, calibrated, _sigmoid(_logit(calibrated) + offsets))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "temperature": self.temperature, "knots_x": list(self.knots_x), "knots_y": list(self.knots_y),
            "answer_offsets": self.answer_offsets,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        offsets = {str(a): float(o) for a, o in data.get("answer_offsets", {}).items()}  # none in files from before them
        return cls(data["method"], float(data["temperature"]), tuple(data["knots_x"]), tuple(data["knots_y"]), offsets)


@dataclass(frozen=True)
class RiskCoverage:
    """For each threshold (descending), the share of items at or above it and their accuracy."""

    thresholds: list[float]
    coverage: list[float]
    accuracy: list[float]
    kept: list[int] = field(default_factory=list)  # items at or above each threshold
    right: list[int] = field(default_factory=list)  # of them, answered right

    def accuracy_lower_bound(self, confidence: float) -> list[float]:
        """The one-sided Clopper-Pearson lower bound, at `confidence`, of each point's accuracy
        (the point estimate itself for `confidence` 0)."""
        if confidence <= 0:
            return list(self.accuracy)
        from scipy.stats import beta

        kept, right = np.asarray(self.kept), np.asarray(self.right)
        bound = beta.ppf(1 - confidence, np.maximum(right, 1), kept - right + 1)
        return list(map(float, np.where(right > 0, bound, 0.0)))


@dataclass(frozen=True)
class Calibration:
    """A version's calibrator, its routing threshold and how well both did on validation.

    `threshold` is None when no share of validation reaches `target_accuracy`: the frontier
    then takes every request. `confidence` and `correct` are the validation items the fit saw
    (for the plots); they are not part of the stored artifact.
    """

    calibrator: Calibrator
    target_accuracy: float
    threshold: float | None
    coverage: float  # validation share the small model serves at the threshold
    served_accuracy: float | None  # accuracy of those served answers (point estimate)
    ece_before: float
    ece_after: float  # cross-fitted
    examples: int
    prior_strength: float | None = None  # of the answer offsets; None: no offsets
    bound_confidence: float = 0.0  # of the accuracy bound the threshold was picked with; 0: point estimate
    confidence: list[float] = field(default_factory=list, repr=False)
    correct: list[bool] = field(default_factory=list, repr=False)
    answers: list[Any] | None = field(default=None, repr=False)

    def serves(self, calibrated_confidence: float) -> bool:
        """Whether the small model keeps an answer of this calibrated confidence."""
        return keeps(self.threshold, calibrated_confidence)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrator": self.calibrator.to_dict(),
            "target_accuracy": self.target_accuracy,
            "threshold": self.threshold,
            "coverage": self.coverage,
            "served_accuracy": self.served_accuracy,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "examples": self.examples,
            "prior_strength": self.prior_strength,
            "bound_confidence": self.bound_confidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            Calibrator.from_dict(data["calibrator"]), float(data["target_accuracy"]), data["threshold"], float(data["coverage"]),
            data["served_accuracy"], float(data["ece_before"]), float(data["ece_after"]), int(data["examples"]),
            data.get("prior_strength"), float(data.get("bound_confidence", 0.0)),
        )

    def metrics(self, golden_confidence: Sequence[float], golden_correct: Sequence[bool], golden_answers: Sequence[Any] | None = None) -> dict[str, float]:
        """What train-adapter logs: ECE before/after on validation (cross-fitted) and on golden
        (the items it never saw), and the routing point."""
        metrics = {
            "validation_ece_before": self.ece_before,
            "validation_ece_after": self.ece_after,
            "router_coverage": self.coverage,
            "router_target_accuracy": self.target_accuracy,
        }
        if self.threshold is not None:
            metrics["router_threshold"] = self.threshold
            metrics["router_served_accuracy"] = self.served_accuracy or 0.0
        if len(golden_confidence):
            metrics["golden_ece_before"] = expected_calibration_error(golden_confidence, golden_correct)
            metrics["golden_ece_after"] = expected_calibration_error(self.calibrator.apply(golden_confidence, golden_answers), golden_correct)
        return metrics

    def save(self, adapter_dir: Path) -> Path:
        """Write `calibration.json` into the adapter's folder; returns its path."""
        path = Path(adapter_dir) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def load_calibration(adapter_dir: Path) -> Calibration | None:
    """The calibration stored beside an adapter; None for a version trained before there was one."""
    path = Path(adapter_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a calibration ({error})") from error


def expected_calibration_error(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, bins: int = 10) -> float:
    """ECE: over `bins` equal-width confidence bins, |accuracy - mean confidence| weighted by size."""
    p, y = _arrays(confidence, correct)
    # Bin i holds (i/bins, (i+1)/bins]; confidence 0 falls in the first bin.
    index = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(y[members].mean() - p[members].mean())
    return float(total / len(p))


def fit_calibrator(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    method: Method = "isotonic",
    answers: Sequence[Any] | None = None,
    prior_strength: float = math.inf,
) -> Calibrator:
    """Fit the map from answer probability to correctness on (confidence, correct) pairs.

    With `answers` and a finite `prior_strength`, also a log-odds offset per (string) answer:
    logit((right + s * c) / (n + s)) - logit(c) over its n items, c their mean calibrated
    confidence, s the prior strength.
    """
    p, y = _arrays(confidence, correct)
    calibrator = _fit_map(p, y, method)
    if answers is None or math.isinf(prior_strength):
        return calibrator
    if len(answers) != len(p):
        raise ValueError(f"{len(answers)} answers for {len(p)} confidences")
    calibrated = calibrator.apply(p)
    offsets = {}
    for answer in sorted({a for a in answers if isinstance(a, str)}):
        members = np.array([a == answer for a in answers])
        mean = float(calibrated[members].mean())
        shrunk = (y[members].sum() + prior_strength * mean) / (members.sum() + prior_strength)
        offsets[answer] = float(_logit(np.array(shrunk)) - _logit(np.array(mean)))
    return replace(calibrator, answer_offsets=offsets)


def _fit_map(p: np.ndarray, y: np.ndarray, method: Method) -> Calibrator:
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
        return Calibrator("isotonic", knots_x=tuple(map(float, model.X_thresholds_)), knots_y=tuple(map(float, model.y_thresholds_)))
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        logits = _logit(p)
        nll = lambda log_t: _log_loss(_sigmoid(logits / math.exp(log_t)), y)  # noqa: E731
        best = minimize_scalar(nll, bounds=(math.log(0.05), math.log(100.0)), method="bounded")
        return Calibrator("temperature", temperature=float(math.exp(best.x)))
    raise ValueError(f"unknown calibration method {method!r} (isotonic or temperature)")


def risk_coverage(calibrated: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> RiskCoverage:
    """Coverage and accuracy of the items kept at each distinct calibrated confidence, highest first."""
    p, y = _arrays(calibrated, correct)
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    # Items tied at a threshold are kept or routed together: evaluate only at the last of each tie.
    last = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    kept = last + 1
    right = np.cumsum(y)[last]
    return RiskCoverage(
        list(map(float, p[last])), list(map(float, kept / len(p))), list(map(float, right / kept)),
        list(map(int, kept)), list(map(int, right)),
    )


def routing_threshold(curve: RiskCoverage, target_accuracy: float, bound_confidence: float = 0.0) -> tuple[float | None, float, float | None]:
    """The lowest threshold whose kept answers reach `target_accuracy`: (threshold, coverage, accuracy).

    With `bound_confidence` > 0 the kept answers' accuracy must reach the target at that
    one-sided confidence (Clopper-Pearson lower bound); the accuracy returned is the point
    estimate. (None, 0.0, None) when even the most confident answers miss the target.
    """
    best: tuple[float | None, float, float | None] = (None, 0.0, None)
    bounds = curve.accuracy_lower_bound(bound_confidence)
    for threshold, coverage, accuracy, bound in zip(curve.thresholds, curve.coverage, curve.accuracy, bounds):
        if bound >= target_accuracy:
            best = (threshold, coverage, accuracy)  # thresholds descend: a later one covers more
    return best


def calibrate(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    target_accuracy: float,
    method: Method = "isotonic",
    answers: Sequence[Any] | None = None,
    *,
    bound_confidence: float = 0.95,
    folds: int = 5,
    seed: int = 0,
) -> Calibration:
    """Fit a calibrator on validation, measure its ECE (cross-fitted) and pick the routing threshold.

    `answers` (each item's answer label; classification) adds the per-answer offsets, their prior
    strength the one of `PRIOR_STRENGTHS` with the lowest cross-fitted log loss. The threshold's
    kept answers reach `target_accuracy` at `bound_confidence` (0: as a point estimate).
    """
    p, y = _arrays(confidence, correct)
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be within (0, 1], got {target_accuracy}")
    if not 0 <= bound_confidence < 1:
        raise ValueError(f"bound_confidence must be within [0, 1), got {bound_confidence}")
    if answers is not None and len(answers) != len(p):
        raise ValueError(f"{len(answers)} answers for {len(p)} confidences")
    fold_of = np.random.default_rng(seed).permutation(len(p)) % max(2, min(folds, len(p)))

    def cross_fitted(strength: float) -> np.ndarray:
        """Every item scored by a calibrator fitted on the other folds (on all, with only one item)."""
        held_out = np.empty_like(p)
        for fold in np.unique(fold_of):
            test = fold_of == fold
            train = ~test if (~test).any() else test
            fitted = fit_calibrator(p[train], y[train], method, _pick(answers, train), strength)
            held_out[test] = fitted.apply(p[test], _pick(answers, test))
        return held_out

    strengths = PRIOR_STRENGTHS if answers is not None else (math.inf,)
    scored = {strength: cross_fitted(strength) for strength in strengths}
    strength = min(strengths, key=lambda s: _log_loss(scored[s], y))
    calibrator = fit_calibrator(p, y, method, answers, strength)
    curve = risk_coverage(calibrator.apply(p, answers), y)
    threshold, coverage, served = routing_threshold(curve, target_accuracy, bound_confidence)
    return Calibration(
        calibrator, target_accuracy, threshold, coverage, served,
        ece_before=expected_calibration_error(p, y), ece_after=expected_calibration_error(scored[strength], y), examples=len(p),
        prior_strength=None if math.isinf(strength) else strength, bound_confidence=bound_confidence,
        confidence=list(map(float, p)), correct=list(map(bool, y)), answers=None if answers is None else list(answers),
    )


def keeps(threshold: float | None, calibrated_confidence: float) -> bool:
    """Whether the small model keeps an answer of this calibrated confidence under `threshold`
    (None: no share of validation reached the target, so it keeps none)."""
    return threshold is not None and calibrated_confidence >= threshold


def live_threshold(
    labeled: Sequence[float] | np.ndarray,
    agreed: Sequence[bool] | np.ndarray,
    weights: Sequence[float] | np.ndarray,
    traffic: Sequence[float] | np.ndarray,
    target_accuracy: float,
    frontier_accuracy: float,
    min_labels: int = 50,
) -> float | None:
    """The lowest threshold at which what callers get on live traffic reaches `target_accuracy`.

    `labeled`: calibrated confidences of small-model answers the frontier also answered (every
    routed input, and the audited ones), `agreed` whether the two answers were the same, `weights`
    the inverse of the chance each was asked (1 for a routed input, 1/`audit_share` for an audit);
    `traffic`: the calibrated confidences of the recent inputs, labeled or not.

    The chance the small model is right at a confidence is a logistic fit of agreement on the
    log-odds of the confidence (clipped 0.001 from 0 and 1: `_LIVE_EPS`), divided by
    `frontier_accuracy` (agreement with a frontier that is itself wrong at times understates it).
    What callers get at a threshold t: that chance over the inputs at or above t, the frontier's
    accuracy over the rest. Which inputs were asked depends on their confidence only, so the fit
    holds across the threshold. None with fewer than `min_labels` labels or with only one outcome
    among them (nothing to fit); where no threshold reaches the target, the one whose estimate
    comes closest.
    """
    c, y = _arrays(labeled, agreed)
    w = np.asarray(weights, dtype=float)
    recent = np.sort(np.clip(np.asarray(traffic, dtype=float), 0.0, 1.0))[::-1]
    if not 0 < frontier_accuracy <= 1:
        raise ValueError(f"frontier_accuracy must be within (0, 1], got {frontier_accuracy}")
    if len(w) != len(c):
        raise ValueError(f"{len(w)} weights for {len(c)} labels")
    if len(c) < max(min_labels, 2) or y.all() or not y.any() or not len(recent):
        return None
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4).fit(_logit(c, _LIVE_EPS)[:, None], y, sample_weight=w)
    right = np.clip(fit.predict_proba(_logit(recent, _LIVE_EPS)[:, None])[:, 1] / frontier_accuracy, 0.0, 1.0)
    kept = np.arange(1, len(recent) + 1)
    served = (np.cumsum(right) + (len(recent) - kept) * frontier_accuracy) / len(recent)
    last = np.r_[np.nonzero(np.diff(recent))[0], len(recent) - 1]  # ties are kept or routed together
    # Highest threshold first: infinity (the frontier answers everything), then each distinct confidence.
    thresholds, estimates = np.r_[np.inf, recent[last]], np.r_[frontier_accuracy, served[last]]
    reached = np.nonzero(estimates >= target_accuracy - 1e-12)[0]
    return float(thresholds[reached[-1]] if len(reached) else thresholds[int(np.argmax(estimates))])


class LiveThreshold:
    """One version's routing threshold, raised from live labels when its answers fall short.

    The router feeds it every small-model answer's calibrated confidence (`observe`) and every
    answer the frontier also gave (`label`: to the inputs it routed, and to the audited ones); every `refit_every` answers it re-fits
    `live_threshold` over the last `window` of each. The threshold in force is the version's
    (fitted on validation) or the live one, whichever is higher: live labels only ever send more
    to the frontier, when the traffic has moved away from what validation showed (bench/RESULTS.md,
    Router). Not thread-safe: the router calls it from its event loop.
    """

    def __init__(
        self, target_accuracy: float, frontier_accuracy: float, *, audit_share: float = 0.0, window: int = 2000, min_labels: int = 50,
        refit_every: int = 50,
    ):
        self.target_accuracy, self.frontier_accuracy, self.audit_share = target_accuracy, frontier_accuracy, audit_share
        self.min_labels, self.refit_every = min_labels, refit_every
        self._traffic: deque[float] = deque(maxlen=window)
        self._labels: deque[tuple[float, bool, float]] = deque(maxlen=window)
        self._since_fit = 0
        self.live: float | None = None  # the last re-fit's threshold (None: not enough labels yet)

    def observe(self, calibrated_confidence: float) -> None:
        self._traffic.append(float(calibrated_confidence))
        self._since_fit += 1
        if self._since_fit >= self.refit_every:
            self._since_fit = 0
            self.refit()

    def label(self, calibrated_confidence: float, agreed: bool, *, audited: bool = False) -> None:
        """The frontier's answer to an input the small model answered with this confidence: `agreed`
        whether the two were the same. A routed input was asked for sure (weight 1); an `audited`
        one with the chance `audit_share` (weight 1/`audit_share`), so the audits stand for all the
        answers the small model kept."""
        if audited and not 0 < self.audit_share <= 1:
            raise ValueError(f"an audit label needs an audit_share within (0, 1], got {self.audit_share}")
        self._labels.append((float(calibrated_confidence), bool(agreed), 1.0 / self.audit_share if audited else 1.0))

    def refit(self) -> float | None:
        if self._labels:
            c, y, w = zip(*self._labels)
            fitted = live_threshold(c, y, w, list(self._traffic), self.target_accuracy, self.frontier_accuracy, self.min_labels)
            self.live = fitted if fitted is not None else self.live
        return self.live

    def threshold(self, version_threshold: float | None) -> float | None:
        """The threshold in force: the version's, raised to the live one (None: the version serves nothing)."""
        if version_threshold is None or self.live is None:
            return version_threshold
        return max(version_threshold, self.live)


def plot_reliability(calibration: Calibration, path: Path, bins: int = 10) -> Path:
    """Reliability diagram of the validation items: accuracy per confidence bin, raw and calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, y = _arrays(calibration.confidence, calibration.correct)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, values, ece in (
        ("answer probability", p, calibration.ece_before),
        (f"calibrated ({calibration.calibrator.method})", calibration.calibrator.apply(p, calibration.answers), calibration.ece_after),
    ):
        index = np.clip(np.ceil(values * bins).astype(int) - 1, 0, bins - 1)
        used = [b for b in range(bins) if (index == b).any()]
        ax.plot([values[index == b].mean() for b in used], [y[index == b].mean() for b in used], marker="o", label=f"{name}, ECE {ece:.3f}")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"reliability on validation ({calibration.examples} items)")
    return _save(fig, path)


def plot_risk_coverage(calibration: Calibration, path: Path) -> Path:
    """Accuracy of the kept answers against the share kept, with the target and the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = risk_coverage(calibration.calibrator.apply(calibration.confidence, calibration.answers), calibration.correct)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve.coverage, curve.accuracy, label="served by the small model")
    if calibration.bound_confidence > 0:
        ax.plot(
            curve.coverage, curve.accuracy_lower_bound(calibration.bound_confidence), linestyle="--",
            label=f"its {calibration.bound_confidence:.0%} lower bound",
        )
    ax.axhline(calibration.target_accuracy, color="grey", linestyle=":", label=f"target {calibration.target_accuracy:.2f}")
    if calibration.threshold is not None:
        ax.scatter([calibration.coverage], [calibration.served_accuracy], color="red", zorder=3, label=f"threshold {calibration.threshold:.3f}")
    ax.set_xlabel("coverage (share the small model answers)")
    ax.set_ylabel("accuracy of its answers")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("risk-coverage on validation")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _arrays(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"confidence and correct must be two lists of one length, got shapes {p.shape} and {y.shape}")
    if not len(p):
        raise ValueError("calibration needs at least one item")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("confidences must be finite and within [0, 1]")
    return p, y


def _pick(answers: Sequence[Any] | None, members: np.ndarray) -> list[Any] | None:
    return None if answers is None else [a for a, keep in zip(answers, members) if keep]


def _log_loss(probability: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(probability, _EPS, 1 - _EPS)
    return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())


def _logit(p: np.ndarray, eps: float = _EPS) -> np.ndarray:
    q = np.clip(p, eps, 1 - eps)
    return np.log(q) - np.log1p(-q)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
