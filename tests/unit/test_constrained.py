import math
import random

import pytest
import torch

from slm_flywheel.models.constrained import LabelConstraint, SlotJsonConstraint, SlotState, is_valid_extraction

SLOTS = ("people", "time", "date", "first_name", "last_name")
TEXT = "Table for 4 at 7pm tomorrow, name Ann Lee"


def _grammar(text: str = TEXT) -> SlotJsonConstraint:
    return SlotJsonConstraint(SLOTS, text, token_strings=[], eos_id=0)


@pytest.mark.parametrize(
    "completion",
    [' {}', ' {"people": "4"}', ' {"people": "4", "time": "7pm", "date": "tomorrow"}', ' {"first_name": "Ann", "last_name": "Lee"}'],
)
def test_slot_grammar_accepts_valid_answers(completion):
    state = _grammar()._advance(SlotState(), completion)
    assert state is not None and state.mode == 11  # done


@pytest.mark.parametrize(
    "completion",
    [
        ' {"guests": "4"}',  # not a slot
        ' {"people": "5"}',  # not a span of the input
        ' {"people": "4", "people": "4"}',  # repeated key
        ' {"people": ""}',  # empty value
        ' {"people": "4"} extra',  # trailing text
        '{"people": "4"}',  # missing the leading space the model was trained with
        ' {"people": "4\\"}',  # escapes are never a span
    ],
)
def test_slot_grammar_rejects_invalid_answers(completion):
    assert _grammar()._advance(SlotState(), completion) is None


def test_label_constraint_always_ends_in_the_label_set():
    labels = {"card_arrival": [5, 6, 99], "card_linking": [5, 7, 99], "exchange_rate": [8, 99]}
    constraint = LabelConstraint(labels)
    rng = random.Random(0)
    for _ in range(200):
        state, done, prob = constraint.start(), False, 1.0
        while not done:
            logits = torch.tensor([rng.gauss(0, 3) for _ in range(120)])
            token, p, state, done = constraint.step(state, torch.log_softmax(logits, -1))
            assert token is not None
            prob *= p
        assert state.decided in labels
        assert 0.0 < prob <= 1.0


def test_label_constraint_confidence_is_the_constrained_probability():
    constraint = LabelConstraint({"a": [1, 5, 9], "ab": [1, 6, 9], "b": [2, 9]})
    logprobs = torch.log_softmax(torch.tensor([0.0, math.log(3), 0.0] + [5.0] * 7), -1)
    token, prob, state, done = constraint.step(constraint.start(), logprobs)
    # tokens 1 and 2 are the only valid ones; token 1 has 3x the weight: 3/4
    assert token == 1 and prob == pytest.approx(0.75) and not done
    token, prob, state, done = constraint.step(state, logprobs)
    # tokens 5 and 6 weigh the same; once a single label is left, its EOS is forced: done
    assert token == 5 and prob == pytest.approx(0.5) and done and state.decided == "a"


def test_identically_tokenized_labels_are_refused():
    with pytest.raises(ValueError, match="tokenize identically"):
        LabelConstraint({"a": [1, 9], "b": [1, 9]})


def test_is_valid_extraction():
    assert is_valid_extraction({"people": "4"}, SLOTS, TEXT)
    assert not is_valid_extraction({"people": "5"}, SLOTS, TEXT)
    assert not is_valid_extraction({"guests": "4"}, SLOTS, TEXT)
