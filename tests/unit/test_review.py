import pytest

from slm_flywheel.models.review import OUT_OF_SCHEMA, SAMPLED, ReviewError, ReviewItem, ReviewQueue, spot_check_sample
from slm_flywheel.models.workload import TaskSpec

SPEC = TaskSpec("banking-intent", "classification", "{text}", labels=("card_arrival", "exchange_rate"))
SLOTS = TaskSpec("restaurant-slots", "extraction", "{text}", slots=("people",))


def _item(item_id, label="card_arrival", reason=SAMPLED):
    return ReviewItem(item_id, "banking-intent", f"text {item_id}", label, "simulated-teacher (SIMULATED)", reason, "run1", "2026-11-28T00:00:00+00:00")


def test_accept_correct_agreement_and_reviewed_labels(tmp_path):
    queue = ReviewQueue(tmp_path, "banking-intent")
    assert queue.enqueue([_item("a"), _item("b"), _item("c"), _item("d", None, OUT_OF_SCHEMA)]) == 4
    assert queue.enqueue([_item("a")]) == 0  # never queued twice
    queue.accept("a", "ana", SPEC)
    queue.correct("b", "exchange_rate", "ana", SPEC)
    queue.correct("c", "card_arrival", "bo", SPEC)  # same as the teacher: counts as agreement
    queue.correct("d", "exchange_rate", "bo", SPEC)  # out-of-schema items are not spot checks
    assert queue.agreement() == (pytest.approx(2 / 3), 3)
    assert sorted(queue.reviewed_labels()) == [("a", "text a", "card_arrival"), ("b", "text b", "exchange_rate"), ("c", "text c", "card_arrival"), ("d", "text d", "exchange_rate")]
    assert queue.pending() == []
    # the file survives a new queue object (a new process)
    assert ReviewQueue(tmp_path, "banking-intent").items()[1].reviewer == "ana"


def test_review_errors_are_clear(tmp_path):
    queue = ReviewQueue(tmp_path, "banking-intent")
    queue.enqueue([_item("a"), _item("n", None, OUT_OF_SCHEMA)])
    with pytest.raises(ReviewError, match="not one of the 2 labels"):
        queue.correct("a", "made_up", "ana", SPEC)
    with pytest.raises(ReviewError, match="no teacher label to accept"):
        queue.accept("n", "ana", SPEC)
    with pytest.raises(ReviewError, match="no review item 'zz'"):
        queue.accept("zz", "ana", SPEC)
    queue.accept("a", "ana", SPEC)
    with pytest.raises(ReviewError, match="already reviewed"):
        queue.accept("a", "bo", SPEC)
    slot_queue = ReviewQueue(tmp_path, "restaurant-slots")
    slot_queue.enqueue([ReviewItem("s", "restaurant-slots", "for 4", None, "t", OUT_OF_SCHEMA, "r", "now")])
    with pytest.raises(ReviewError, match="must be a non-empty span"):
        slot_queue.correct("s", '{"people": "5"}', "ana", SLOTS)
    assert slot_queue.correct("s", '{"people": "4"}', "ana", SLOTS).status == "corrected"


def test_spot_check_sample_is_reproducible_and_sized():
    ids = [str(i) for i in range(200)]
    assert len(spot_check_sample(ids, 0.05, 1)) == 10
    assert spot_check_sample(ids, 0.05, 1) == spot_check_sample(list(reversed(ids)), 0.05, 1)
    assert len(spot_check_sample(ids[:3], 0.05, 1)) == 1
    assert spot_check_sample(ids, 0.0, 1) == set()


def _label(item_id, label, reason="ok"):
    from slm_flywheel.models.teacher import TeacherLabel

    return TeacherLabel(item_id, label, label is not None, reason, 0.0, False, "teacher")


def test_review_items_are_the_spot_checks_and_every_out_of_schema_answer():
    from slm_flywheel.models.review import review_items

    labels = [_label("a", "card_arrival"), _label("b", "exchange_rate"), _label("c", None, OUT_OF_SCHEMA), _label("d", None, "budget_exhausted")]
    texts = {key: f"text {key}" for key in "abcd"}
    items = review_items("banking-intent", labels, texts, "teacher", {"b"}, "run1", "2026-11-28T00:00:00+00:00")
    assert [(i.item_id, i.reason, i.teacher_label, i.text) for i in items] == [("b", SAMPLED, "exchange_rate", "text b"), ("c", OUT_OF_SCHEMA, None, "text c")]


def test_training_labels_prefer_a_reviewer_over_the_teacher_and_keep_earlier_reviews():
    from slm_flywheel.models.review import training_labels

    valid = [_label("a", "card_arrival"), _label("b", "card_arrival")]
    texts = {"a": "text a", "b": "text b"}
    reviewed = [("b", "text b", "exchange_rate"), ("old", "older text", "card_arrival")]
    rows = training_labels(valid, texts, reviewed)
    assert list(rows.columns) == ["id", "text", "label"]
    assert rows.values.tolist() == [["a", "text a", "card_arrival"], ["b", "text b", "exchange_rate"], ["old", "older text", "card_arrival"]]
