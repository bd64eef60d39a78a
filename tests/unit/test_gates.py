import pytest

from slm_flywheel.config import GateConfig
from slm_flywheel.models.gates import ModelEval, decide, mcnemar_exact

GATES = GateConfig(min_delta=0.02, alpha=0.05, max_golden_drop=0.01, max_slice_regression=0.1, min_slice_support=20, max_latency_factor=1.5)


def _eval(name, drift_correct, golden_acc=0.8, breakdown=None, latency=100.0):
    drift_acc = sum(drift_correct) / len(drift_correct)
    return ModelEval(name, {"accuracy": golden_acc}, breakdown or {"a": {"f1": 0.8, "support": 30}}, {"accuracy": drift_acc}, drift_correct, latency)


def test_mcnemar_exact_matches_the_binomial_tail():
    b, c, p = mcnemar_exact([False] * 10 + [True] * 2, [True] * 10 + [False] * 2)
    assert (b, c) == (10, 2)
    assert p == pytest.approx(79 / 4096)  # P(X >= 10), X ~ Bin(12, 1/2)
    assert mcnemar_exact([True, False], [True, False])[2] == 1.0


def test_a_clear_significant_win_is_promoted_and_every_number_is_recorded():
    champion = _eval("champion", [True] * 50 + [False] * 50)
    candidate = _eval("candidate", [True] * 80 + [False] * 20, golden_acc=0.805)
    decision = decide(_eval("base", [True] * 10 + [False] * 90, golden_acc=0.1), champion, candidate, GATES)
    assert decision.promote, decision.reasons
    assert decision.metrics["drift_gain"] == pytest.approx(0.3)
    assert {"base_golden_headline", "champion_drift_headline", "candidate_latency_p95_ms", "mcnemar_p"} <= set(decision.metrics)
    assert "PROMOTE" in decision.to_markdown()


@pytest.mark.parametrize(
    "candidate, failing",
    [
        (_eval("candidate", [True] * 51 + [False] * 49), "improvement >= min_delta"),
        (_eval("candidate", [True] * 80 + [False] * 20, golden_acc=0.7), "golden: drop"),
        (_eval("candidate", [True] * 80 + [False] * 20, breakdown={"a": {"f1": 0.5, "support": 30}}), "slice regresses"),
        (_eval("candidate", [True] * 80 + [False] * 20, latency=200.0), "latency"),
    ],
)
def test_each_gate_blocks_promotion_and_says_why(candidate, failing):
    decision = decide(None, _eval("champion", [True] * 50 + [False] * 50), candidate, GATES)
    assert not decision.promote
    assert any(failing in reason for reason in decision.reasons), decision.reasons


def test_a_win_that_is_not_significant_is_not_promoted():
    champion = _eval("champion", [True, False, False, False, True])
    candidate = _eval("candidate", [True, True, True, False, True])  # +40 points, but 2 discordant pairs
    decision = decide(None, champion, candidate, GATES)
    assert not decision.promote and any("McNemar" in reason for reason in decision.reasons)


def test_a_thin_slice_may_move_without_blocking():
    champion = _eval("champion", [True] * 50 + [False] * 50, breakdown={"rare": {"f1": 0.9, "support": 5}})
    candidate = _eval("candidate", [True] * 80 + [False] * 20, breakdown={"rare": {"f1": 0.1, "support": 5}})
    assert decide(None, champion, candidate, GATES).promote
