"""Calibrated confidence: the ECE, the calibrators and the routing threshold on known data."""

from __future__ import annotations

import numpy as np
import pytest

from slm_flywheel.models.calibration import (
    Calibration,
    LiveThreshold,
    calibrate,
    expected_calibration_error,
    fit_calibrator,
    live_threshold,
    load_calibration,
    plot_reliability,
    plot_risk_coverage,
    risk_coverage,
    routing_threshold,
)


def _over_confident(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A model right with probability q that reports q ** 0.3: 0.5 becomes 0.81."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.3, 1.0, count)
    return q**0.3, rng.random(count) < q


def test_ece_of_a_hand_computed_example():
    # Bin (0.8, 0.9]: accuracy 0.5 at confidence 0.9; bin (0, 0.1]: accuracy 0 at 0.1.
    assert expected_calibration_error([0.9, 0.9, 0.1, 0.1], [True, False, False, False]) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert expected_calibration_error([1.0, 0.0], [True, False]) == 0.0


def test_isotonic_calibration_removes_over_confidence():
    confidence, correct = _over_confident(4000, seed=1)
    calibration = calibrate(confidence, correct, target_accuracy=0.9, method="isotonic")
    assert calibration.ece_before > 0.2
    assert calibration.ece_after < 0.03
    # On fresh items from the same model the calibrated confidence is honest too.
    fresh, fresh_correct = _over_confident(4000, seed=2)
    calibrated = calibration.calibrator.apply(fresh)
    assert expected_calibration_error(calibrated, fresh_correct) < 0.03
    assert abs(calibrated.mean() - fresh_correct.mean()) < 0.02


def test_temperature_scaling_softens_an_over_confident_model():
    confidence, correct = _over_confident(4000, seed=1)
    calibration = calibrate(confidence, correct, target_accuracy=0.9, method="temperature")
    # One parameter cannot undo q ** 0.3 exactly, but it must cool it and halve the error.
    assert calibration.calibrator.temperature > 1.5
    assert calibration.ece_after < calibration.ece_before / 2
    assert (calibration.calibrator.apply(confidence) <= confidence + 1e-12).all()


def test_threshold_is_the_largest_share_at_the_target():
    # 100 items by rising confidence: the 60 most confident are right, the rest wrong.
    confidence = np.linspace(0.01, 1.0, 100)
    correct = np.arange(100) >= 40
    curve = risk_coverage(confidence, correct)
    assert curve.coverage[0] == 0.01 and curve.coverage[-1] == 1.0
    # Keeping the top k has accuracy 60 / k: k = 66 is the most that stays at 0.9 or above.
    threshold, coverage, accuracy = routing_threshold(curve, 0.9)
    assert coverage == pytest.approx(0.66) and threshold == pytest.approx(confidence[34])
    assert accuracy == pytest.approx(60 / 66)
    # Isotonic calibration makes the two groups two steps: exactly the 60 right ones are kept.
    calibration = calibrate(confidence, correct, target_accuracy=0.9)
    assert (calibration.coverage, calibration.served_accuracy, calibration.threshold) == (0.6, 1.0, 1.0)
    assert calibration.serves(1.0) and not calibration.serves(0.99)


def test_an_unreachable_target_routes_everything_to_the_frontier():
    confidence = np.linspace(0.5, 0.9, 50)
    correct = np.arange(50) % 2 == 0  # right half the time at every confidence
    calibration = calibrate(confidence, correct, target_accuracy=0.95)
    assert (calibration.threshold, calibration.coverage, calibration.served_accuracy) == (None, 0.0, None)
    assert not calibration.serves(1.0)


def test_ties_are_kept_or_routed_together():
    curve = risk_coverage([0.9, 0.9, 0.9, 0.5], [True, True, False, True])
    assert (curve.thresholds, curve.coverage) == ([0.9, 0.5], [0.75, 1.0])
    assert curve.accuracy == pytest.approx([2 / 3, 0.75])


def _confusable(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Two answers at the same confidences: "clear" right 95% of the time, "absorbing" 40%."""
    rng = np.random.default_rng(seed)
    answers = ["clear" if i % 2 else "absorbing" for i in range(count)]
    confidence = rng.uniform(0.6, 1.0, count)
    correct = rng.random(count) < np.where(np.array(answers) == "clear", 0.95, 0.4)
    return confidence, correct, answers


def test_per_answer_offsets_separate_an_answer_that_absorbs_mistakes():
    confidence, correct, answers = _confusable(400, seed=4)
    plain = calibrate(confidence, correct, target_accuracy=0.9)
    by_answer = calibrate(confidence, correct, target_accuracy=0.9, answers=answers)
    assert plain.prior_strength is None and plain.calibrator.answer_offsets == {}
    # Cross-fitted log loss picks a finite prior: the answer says more than the probability here.
    assert by_answer.prior_strength is not None and by_answer.ece_after < 0.1
    offsets = by_answer.calibrator.answer_offsets
    assert offsets["absorbing"] < -1.0 < 0.5 < offsets["clear"]
    # The probability alone cannot reach 0.9 on more than a sliver; with the answer, "clear" is kept.
    assert by_answer.coverage > 0.4 > plain.coverage and by_answer.served_accuracy >= 0.9
    fresh, fresh_correct, fresh_answers = _confusable(400, seed=5)
    calibrated = by_answer.calibrator.apply(fresh, fresh_answers)
    assert expected_calibration_error(calibrated, fresh_correct) < 0.1
    # An answer never seen on validation, or none at all, gets the probability's map only.
    unseen = by_answer.calibrator.apply([0.8, 0.8], ["other", None])
    assert np.allclose(unseen, by_answer.calibrator.apply([0.8, 0.8]))
    with pytest.raises(ValueError, match="1 answers for 2 confidences"):
        by_answer.calibrator.apply([0.8, 0.8], ["clear"])


def test_calibration_travels_as_json_beside_the_adapter(tmp_path):
    confidence, correct = _over_confident(500, seed=3)
    calibration = calibrate(confidence, correct, target_accuracy=0.8, method="isotonic")
    assert load_calibration(tmp_path) is None  # a version from before calibration
    calibration.save(tmp_path)
    loaded = load_calibration(tmp_path)
    assert loaded is not None and loaded.to_dict() == calibration.to_dict()
    assert np.allclose(loaded.calibrator.apply(confidence), calibration.calibrator.apply(confidence))
    assert plot_reliability(calibration, tmp_path / "reliability.png").stat().st_size > 0
    assert plot_risk_coverage(calibration, tmp_path / "risk_coverage.png").stat().st_size > 0
    confidence, correct, answers = _confusable(200, seed=6)
    by_answer = calibrate(confidence, correct, target_accuracy=0.9, answers=answers)
    by_answer.save(tmp_path)
    loaded = load_calibration(tmp_path)
    assert loaded is not None and loaded.to_dict() == by_answer.to_dict() and loaded.calibrator.answer_offsets
    assert np.allclose(loaded.calibrator.apply(confidence, answers), by_answer.calibrator.apply(confidence, answers))
    assert plot_risk_coverage(by_answer, tmp_path / "risk_coverage_by_answer.png").stat().st_size > 0
    (tmp_path / "calibration.json").write_text('{"threshold": 0.5}')
    with pytest.raises(ValueError, match="calibration.json: not a calibration"):
        load_calibration(tmp_path)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one length"):
        fit_calibrator([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        fit_calibrator([0.5, 1.5], [True, False])
    with pytest.raises(ValueError, match="at least one item"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator([0.5], [True], "platt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_accuracy"):
        calibrate([0.5], [True], target_accuracy=0)


def test_the_logged_metrics_hold_golden_ece_before_and_after_and_the_routing_point():
    confidence, correct = _over_confident(4000, seed=1)
    calibration = calibrate(confidence, correct, target_accuracy=0.9, method="isotonic")
    fresh, fresh_correct = _over_confident(4000, seed=2)
    metrics = calibration.metrics(fresh, fresh_correct)
    assert metrics["golden_ece_before"] == pytest.approx(expected_calibration_error(fresh, fresh_correct))
    assert metrics["golden_ece_after"] < 0.03 < metrics["golden_ece_before"]
    assert (metrics["router_threshold"], metrics["router_coverage"]) == (calibration.threshold, calibration.coverage)
    assert "golden_ece_before" not in calibration.metrics([], [])


def test_the_threshold_holds_the_target_at_the_bound_confidence():
    # The same 100 items: 60 right at the top. The point estimate keeps 66 (60/66 = 0.909); the
    # 95% lower bound of 60/66 is far under 0.9, so the bound keeps fewer.
    confidence = np.linspace(0.01, 1.0, 100)
    correct = np.arange(100) >= 40
    curve = risk_coverage(confidence, correct)
    point = routing_threshold(curve, 0.9)
    bounded = routing_threshold(curve, 0.9, bound_confidence=0.95)
    assert bounded[1] < point[1] and bounded[0] > point[0]
    lower = curve.accuracy_lower_bound(0.95)
    chosen = curve.thresholds.index(bounded[0])
    assert lower[chosen] >= 0.9 > lower[chosen + 1]
    # The bound is the exact (Clopper-Pearson) one: scipy's two-sided 90% interval's lower end.
    from scipy.stats import binomtest

    for i in (chosen, chosen + 1, len(curve.kept) - 1):
        exact = binomtest(curve.right[i], curve.kept[i]).proportion_ci(confidence_level=0.90, method="exact").low
        assert lower[i] == pytest.approx(exact, abs=1e-9)
    assert curve.accuracy_lower_bound(0) == curve.accuracy
    # calibrate stores the confidence it used; a stored calibration reads back the same.
    calibration = calibrate(confidence, correct, target_accuracy=0.9, bound_confidence=0.8)
    assert calibration.bound_confidence == 0.8
    assert Calibration.from_dict(calibration.to_dict()).bound_confidence == 0.8
    with pytest.raises(ValueError, match="bound_confidence"):
        calibrate(confidence, correct, target_accuracy=0.9, bound_confidence=1.0)


def _live_traffic(count: int, seed: int, power: float, version_threshold: float, audit_share: float):
    """Drifted traffic: calibrated confidence c, the small model right with probability c ** power,
    the frontier right 95% of the time; every input under the version's threshold labeled by the
    frontier (weight 1), `audit_share` of the others (weight 1 / audit_share)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.5, 1.0, count)
    slm_right, frontier_right = rng.random(count) < c**power, rng.random(count) < 0.95
    labeled = (c < version_threshold) | (rng.random(count) < audit_share)
    weights = np.where(c < version_threshold, 1.0, 1.0 / audit_share)[labeled]
    return c, slm_right, frontier_right, c[labeled], (slm_right & frontier_right)[labeled], weights


def _served(c, slm_right, frontier_right, threshold):
    return float(np.where(c >= threshold, slm_right, frontier_right).mean())


def test_live_labels_raise_the_threshold_to_what_holds_the_target_on_harder_traffic():
    # Right with probability c ** 4: 0.9 confident is right 66% of the time. The version's
    # threshold (0.6, from validation) serves ~0.63 here; the live one must hold 0.90 without
    # sending everything to the frontier.
    c, slm_right, frontier_right, labeled, agreed, weights = _live_traffic(6000, 0, 4.0, 0.6, 0.1)
    threshold = live_threshold(labeled, agreed, weights, c, 0.90, 0.95)
    assert _served(c, slm_right, frontier_right, 0.6) < 0.7
    assert threshold is not None and 0.6 < threshold < 1.0
    assert _served(c, slm_right, frontier_right, threshold) >= 0.89
    # The truth's own lowest threshold for 0.90 (expected accuracies): the live one is near it.
    grid = np.linspace(0.5, 1.0, 501)
    expected = [float(np.where(c >= t, c**4, 0.95).mean()) for t in grid]
    truth = grid[next(i for i, e in enumerate(expected) if e >= 0.90)]
    assert abs(float((c < threshold).mean()) - float((c < truth).mean())) < 0.08


def test_the_live_threshold_only_ever_raises_the_versions():
    # Traffic easier than validation showed (right with probability c ** 0.25: a 0.6 answer 88% of
    # the time): the live fit would serve more, but the threshold in force stays the version's.
    c, _, _, labeled, agreed, weights = _live_traffic(3000, 1, 0.25, 0.6, 0.1)
    live = LiveThreshold(0.90, 0.95, audit_share=0.1, refit_every=100)
    for confidence in c[:99]:
        live.observe(confidence)
    for confidence, agreed_, weight in zip(labeled, agreed, weights):
        live.label(confidence, agreed_, audited=weight > 1)
    assert live.live is None and live.threshold(0.6) == 0.6  # no re-fit before `refit_every` answers
    live.observe(c[99])
    assert live.live is not None and live.live < 0.6 and live.threshold(0.6) == 0.6
    assert live.threshold(None) is None  # a version that serves nothing stays so


def test_the_live_fit_waits_for_labels_of_both_kinds_and_names_bad_input():
    c = np.linspace(0.5, 1.0, 100)
    assert live_threshold(c[:10], [True, False] * 5, [1.0] * 10, c, 0.9, 0.95, min_labels=50) is None
    assert live_threshold(c, [True] * 100, [1.0] * 100, c, 0.9, 0.95) is None  # no disagreement: nothing to fit
    with pytest.raises(ValueError, match="2 weights for 100 labels"):
        live_threshold(c, [True, False] * 50, [1.0, 1.0], c, 0.9, 0.95)
    with pytest.raises(ValueError, match="frontier_accuracy"):
        live_threshold(c, [True, False] * 50, [1.0] * 100, c, 0.9, 0.0)
    with pytest.raises(ValueError, match="audit label needs an audit_share"):
        LiveThreshold(0.9, 0.95).label(0.9, True, audited=True)  # audits without a share to weight them by


def test_answers_calibrated_to_exactly_one_do_not_flatten_the_live_fit():
    # The isotonic calibrator gives its top bin exactly 1.0: here a fifth of the traffic, right 90%
    # of the time; the rest is right with probability c ** 3. Unclipped, those answers sat at
    # log-odds 13.8 and the fit, flattened to reach them, sent ~8 points more traffic to the
    # frontier than the target needs; the threshold must come within 5 points of the truth's share.
    excess = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        top = rng.random(6000) < 0.2
        c = np.where(top, 1.0, rng.uniform(0.3, 0.99, 6000))
        p = np.where(top, 0.9, c**3)
        slm_right, frontier_right = rng.random(6000) < p, rng.random(6000) < 0.95
        labeled = (c < 0.6) | (rng.random(6000) < 0.05)
        weights = np.where(c < 0.6, 1.0, 1 / 0.05)[labeled]
        threshold = live_threshold(c[labeled], (slm_right & frontier_right)[labeled], weights, c, 0.90, 0.95)
        grid = np.unique(c)
        truth = grid[np.nonzero([np.where(c >= t, p, 0.95).mean() >= 0.90 for t in grid])[0][0]]
        assert np.where(c >= threshold, p, 0.95).mean() >= 0.895  # expected served accuracy holds
        excess.append(float((c < threshold).mean() - (c < truth).mean()))
    assert np.mean(excess) < 0.05, excess
