import numpy as np

from slm_flywheel.config import GuardConfig
from slm_flywheel.models.guard import LiveSignals, decide_rollback

CONFIG = GuardConfig()
RNG = np.random.default_rng(0)


def _signals(version, confidences, invalid=0, agreement=None, audited=0):
    return LiveSignals(version, np.asarray(confidences), invalid, len(confidences) + invalid, agreement, audited)


def test_waits_for_enough_samples():
    decision = decide_rollback(_signals(1, RNG.uniform(0.8, 1, 500)), _signals(2, RNG.uniform(0, 0.2, 30)), CONFIG)
    assert not decision.trip and not decision.enough_samples and "waiting for samples" in decision.reasons[0]


def test_a_clearly_worse_champion_trips_on_each_signal():
    baseline = _signals(1, RNG.beta(8, 2, 400), invalid=4, agreement=0.9, audited=40)
    lower_confidence = decide_rollback(baseline, _signals(2, RNG.beta(2, 3, 400), invalid=4, agreement=0.9, audited=40), CONFIG)
    assert lower_confidence.trip and "confidence fell" in lower_confidence.reasons[0]
    more_invalid = decide_rollback(baseline, _signals(2, RNG.beta(8, 2, 360), invalid=40, agreement=0.9, audited=40), CONFIG)
    assert more_invalid.trip and any("invalid answers rose" in r for r in more_invalid.reasons)
    disagrees = decide_rollback(baseline, _signals(2, RNG.beta(8, 2, 400), invalid=4, agreement=0.4, audited=40), CONFIG)
    assert disagrees.trip and any("teacher agreement fell" in r for r in disagrees.reasons)
    assert disagrees.evidence["agreement_live"] == 0.4


def test_an_equal_or_better_champion_does_not_trip():
    baseline = _signals(1, RNG.beta(8, 2, 400), invalid=8, agreement=0.85, audited=40)
    same = decide_rollback(baseline, _signals(2, RNG.beta(8, 2, 400), invalid=8, agreement=0.85, audited=40), CONFIG)
    better = decide_rollback(baseline, _signals(2, RNG.beta(12, 1, 400), invalid=0, agreement=0.95, audited=40), CONFIG)
    assert not same.trip and not better.trip and same.enough_samples


def test_a_small_audit_does_not_count():
    baseline = _signals(1, RNG.beta(8, 2, 400), agreement=0.9, audited=40)
    decision = decide_rollback(baseline, _signals(2, RNG.beta(8, 2, 400), agreement=0.0, audited=5), CONFIG)
    assert not decision.trip and "agreement_live" not in decision.evidence


def test_audit_counts_only_judged_answers_and_ignores_slot_order():
    from slm_flywheel.models.guard import audit_answers
    from slm_flywheel.models.workload import TaskSpec

    slots = TaskSpec("restaurant-slots", "extraction", "{text}", slots=("people", "time"))
    audit = audit_answers(slots, ['{"people": "2", "time": "7pm"}', '{"people": "3"}', '{"people": "4"}'], ['{"time": "7pm", "people": "2"}', '{"people": "5"}', None])
    assert (audit.audited, audit.agreed, audit.agreement) == (2, 1, 0.5)
    intents = TaskSpec("banking-intent", "classification", "{text}", labels=("a", "b"))
    assert audit_answers(intents, ["a"], [None]).agreement is None
    assert audit_answers(intents, ["a", "b"], ["a", "a"]).agreed == 1


def test_the_routers_figures_are_evidence_for_both_versions_and_do_not_decide():
    from dataclasses import replace

    from slm_flywheel.models.router_stats import RouterFigures

    def figures(version, wrong, label_free):
        rate = wrong / 50
        return RouterFigures(None, f"banking-intent@v{version}", 400, 40, 0, 0.1, 120.0, 0.2, 50, wrong, rate, rate / 2, rate * 2, 360, label_free, 1 - rate)

    baseline = replace(_signals(1, RNG.beta(8, 2, 400), agreement=0.9, audited=40), router=figures(1, 5, 0.9))
    live = replace(_signals(2, RNG.beta(8, 2, 400), agreement=0.9, audited=40), router=figures(2, 25, 0.88))
    decision = decide_rollback(baseline, live, CONFIG)
    assert not decision.trip  # a worse wrong-path rate is reported, not acted on
    evidence = decision.evidence
    assert (evidence["router_wrong_path_rate_baseline"], evidence["router_wrong_path_rate_live"]) == (0.1, 0.5)
    assert (evidence["router_label_free_accuracy_baseline"], evidence["router_label_free_accuracy_live"]) == (0.9, 0.88)
    assert evidence["router_audited_agreement_live"] == 0.5 and evidence["router_audited_live"] == 50
    assert evidence["router_wrong_path_low_live"] == 0.25 and evidence["router_wrong_path_high_live"] == 1.0
    unrouted = decide_rollback(_signals(1, RNG.beta(8, 2, 400)), _signals(2, RNG.beta(8, 2, 400)), CONFIG)
    assert not any(key.startswith("router_") for key in unrouted.evidence)
