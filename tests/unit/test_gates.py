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


def test_gate_eval_sets_time_the_drift_slice_and_top_up_a_small_one_for_latency():
    from slm_flywheel.models.gates import LATENCY_BATCH, LATENCY_PROBE_MIN, gate_eval_sets

    golden = ([f"g{i}" for i in range(100)], [f"l{i}" for i in range(100)])
    sets = gate_eval_sets(golden, (["d0", "d1"], ["x", "y"]))
    assert sets["golden"].cached and not sets["drift"].cached and sets["drift"].batch_size == LATENCY_BATCH
    probe = sets["latency"]
    assert len(probe.texts) == LATENCY_PROBE_MIN and probe.texts[:3] == ["d0", "d1", "g0"] and probe.references[2] == "l0"
    assert not probe.cached
    large = gate_eval_sets(golden, ([f"d{i}" for i in range(LATENCY_PROBE_MIN)], ["x"] * LATENCY_PROBE_MIN))
    assert "latency" not in large


def test_model_eval_takes_latency_from_the_probe_when_there_is_one():
    from slm_flywheel.models.evaluation import EvalResult
    from slm_flywheel.models.gates import model_eval

    golden = EvalResult({"accuracy": 0.9}, {"a": {"f1": 0.9}}, ["a", "b"], ["a", "a"])
    drift = EvalResult({"accuracy": 0.5, "latency_p95_ms": 10.0}, {}, ["a", "b"], ["a", "a"])
    probe = EvalResult({"latency_p95_ms": 12.0}, {}, [], [])
    assert model_eval("candidate", {"golden": golden, "drift": drift, "latency": probe}).latency_p95_ms == 12.0
    evaluated = model_eval("base", {"golden": golden, "drift": drift})
    assert evaluated.latency_p95_ms == 10.0 and evaluated.drift_correct == [True, False] and evaluated.golden_breakdown == {"a": {"f1": 0.9}}
