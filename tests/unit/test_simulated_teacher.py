"""The simulated teacher: the gold with a controlled rate of plausible mistakes, a cost and a cap."""

from __future__ import annotations

import json
import logging

import pytest

from slm_flywheel.models.constrained import is_valid_extraction
from slm_flywheel.models.teacher import BUDGET_EXHAUSTED, OK, SimulatedTeacher, TeacherItem
from slm_flywheel.models.workload import TaskSpec

SLOTS = ("people", "time", "date", "first_name", "last_name")


@pytest.fixture(scope="module")
def banking(data_dir) -> TaskSpec:
    labels = tuple(json.loads((data_dir / "banking77" / "categories.json").read_text()))
    return TaskSpec(name="banking-intent", task="classification", prompt_template="Banking message: {text}\nIntent:", labels=labels)


def _traffic(spec: TaskSpec, count: int) -> tuple[list[TeacherItem], dict[str, str]]:
    items = [TeacherItem(f"sim-{i}", f"message {i}") for i in range(count)]
    return items, {item.item_id: spec.labels[i % len(spec.labels)] for i, item in enumerate(items)}


def _shared_tokens(a: str, b: str) -> int:
    return len(set(a.split("_")) & set(b.split("_")))


def test_error_rate_is_respected(banking):
    items, gold = _traffic(banking, 2000)
    run = SimulatedTeacher(banking, gold, error_rate=0.1, budget_usd=100.0).label(items)
    wrong = sum(label.label != gold[label.item_id] for label in run.labels)
    assert 0.07 <= wrong / len(items) <= 0.13
    assert all(label.valid and label.label in banking.labels for label in run.labels)


@pytest.mark.parametrize("error_rate", [0.0, 1.0])
def test_error_rate_extremes(banking, error_rate):
    items, gold = _traffic(banking, 300)
    run = SimulatedTeacher(banking, gold, error_rate=error_rate, budget_usd=100.0).label(items)
    wrong = sum(label.label != gold[label.item_id] for label in run.labels)
    assert wrong == round(error_rate * len(items))


def test_mistakes_are_confusable_labels(banking):
    items, gold = _traffic(banking, 600)
    run = SimulatedTeacher(banking, gold, error_rate=0.5, budget_usd=100.0).label(items)
    mistakes = [(gold[label.item_id], label.label) for label in run.labels if label.label != gold[label.item_id]]
    assert len(mistakes) > 200
    for truth, answer in mistakes:
        most = max(_shared_tokens(truth, other) for other in banking.labels if other != truth)
        assert _shared_tokens(truth, answer) == most, (truth, answer)
    # The example the design names: card_arrival is confused with another intent about a card.
    card_arrival = [answer for truth, answer in mistakes if truth == "card_arrival"]
    assert card_arrival and all("card" in answer.split("_") for answer in card_arrival)


def test_deterministic_for_a_seed(banking):
    items, gold = _traffic(banking, 500)

    def answers(seed: int, batch: list[TeacherItem]) -> dict[str, str | None]:
        run = SimulatedTeacher(banking, gold, error_rate=0.2, seed=seed, budget_usd=100.0).label(batch)
        return {label.item_id: label.label for label in run.labels}

    assert answers(3, items) == answers(3, items)
    assert answers(3, items) != answers(4, items)
    # An item's answer does not depend on what else is in the batch, nor on its position.
    everything, some = answers(3, items), answers(3, items[::-5])
    assert some == {item_id: everything[item_id] for item_id in some}


def test_says_it_is_a_simulation(banking, caplog):
    items, gold = _traffic(banking, 20)
    teacher = SimulatedTeacher(banking, gold, budget_usd=0.005)
    with caplog.at_level(logging.DEBUG, logger="flywheel.teacher"):
        run = teacher.label(items + [TeacherItem("not-simulated", "hello")])
    assert "SIMULATED" in teacher.name
    assert {label.teacher for label in run.labels} == {teacher.name}
    records = [record for record in caplog.records if record.name == "flywheel.teacher"]
    assert records and all("SIMULATED" in record.getMessage() for record in records)


def test_cost_per_item_and_budget_cap(banking):
    items, gold = _traffic(banking, 30)
    run = SimulatedTeacher(banking, gold, price_per_item_usd=0.0005, budget_usd=0.0105).label(items)
    answered = [label for label in run.labels if label.valid]
    assert len(answered) == 21  # 21 x $0.0005 = $0.0105, exactly the budget
    assert all(label.cost_usd == 0.0005 and label.reason == OK for label in answered)
    assert [label.reason for label in run.labels[21:]] == [BUDGET_EXHAUSTED] * 9
    assert all(label.label is None and label.cost_usd == 0.0 for label in run.labels[21:])
    assert run.cost_usd == pytest.approx(21 * 0.0005) and run.cost_usd <= run.budget_usd
    assert run.calls == 21


def test_unknown_items_are_invalid_and_free(banking):
    items, gold = _traffic(banking, 3)
    run = SimulatedTeacher(banking, gold).label(items + [TeacherItem("stranger", "who am I")])
    stranger = run.labels[-1]
    assert (stranger.valid, stranger.label, stranger.cost_usd) == (False, None, 0.0)
    assert stranger.reason == "no_ground_truth"  # not "failed: ...": nothing a retry could fix
    assert run.cost_usd == pytest.approx(3 * 0.0005)


def test_extraction_mistakes_drop_or_move_a_span():
    spec = TaskSpec(name="restaurant-slots", task="extraction", prompt_template="{text}", slots=SLOTS)
    texts = ["Table for 4 at 7pm tomorrow, name Ann Lee", "book a table for two on friday", "a table please"]
    golds = [
        '{"people": "4", "time": "7pm", "date": "tomorrow", "first_name": "Ann", "last_name": "Lee"}',
        '{"people": "two", "date": "friday"}',
        "{}",
    ]
    items = [TeacherItem(f"r-{i}", texts[i % 3]) for i in range(300)]
    gold = {item.item_id: golds[i % 3] for i, item in enumerate(items)}
    run = SimulatedTeacher(spec, gold, error_rate=1.0, budget_usd=100.0).label(items)
    kinds = set()
    for item, label in zip(items, run.labels):
        truth, answer = json.loads(gold[item.item_id]), json.loads(label.label)
        assert answer != truth
        assert is_valid_extraction(answer, SLOTS, item.text)  # a wrong answer is still in the schema
        assert label.label == spec.answer_to_label(answer)  # canonical slot order
        if len(answer) == len(truth) - 1 and answer.items() <= truth.items():
            kinds.add("dropped")
        elif answer.keys() == truth.keys():
            assert sum(answer[name] != truth[name] for name in truth) == 1
            kinds.add("moved")
        else:
            assert truth == {} and len(answer) == 1
            kinds.add("spurious")
    assert kinds == {"dropped", "moved", "spurious"}
