import pandas as pd
import pytest

from slm_flywheel.config import load_settings
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.review import SAMPLED, ReviewItem, ReviewQueue
from slm_flywheel.models.teacher import SimulatedTeacher, TeacherItem
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.tasks.relabel import TeacherDistrustError, label_with_cache, relabel_with_teacher
from tests.conftest import REPO

SPEC = TaskSpec("banking-intent", "classification", "{text}", labels=("card_arrival", "exchange_rate"))


def test_cached_answers_are_free_and_identical(tmp_path):
    gold = {f"r{i}": SPEC.labels[i % 2] for i in range(20)}
    teacher = SimulatedTeacher(SPEC, gold, error_rate=0.2, seed=1)
    items = [TeacherItem(f"r{i}", f"text {i}") for i in range(20)]
    first, cached_first = label_with_cache(teacher, items, tmp_path)
    second, cached_second = label_with_cache(teacher, items, tmp_path)
    assert first.cost_usd > 0 and cached_first == 0
    assert second.cost_usd == 0 and cached_second == 20
    assert [l.label for l in first.labels] == [l.label for l in second.labels]
    assert all(l.cached for l in second.labels)


def test_low_teacher_reviewer_agreement_refuses_teacher_labels(tmp_path, data_dir):
    settings = load_settings(REPO / "flywheel.yaml", home=tmp_path, data_dir=data_dir)
    queue = ReviewQueue(settings.state_dir / "review", "banking-intent")
    queue.enqueue([ReviewItem(f"r{i}", "banking-intent", f"t{i}", "card_arrival", "t", SAMPLED, "run", "now") for i in range(10)])
    for i in range(10):
        if i < 4:
            queue.accept(f"r{i}", "ana", SPEC)
        else:
            queue.correct(f"r{i}", "exchange_rate", "ana", SPEC)
    selected = pd.DataFrame({"request_id": ["x"], "input": ["where is my card"]})
    with pytest.raises(TeacherDistrustError, match="agreement is 0.40 over 10 spot checks, below the floor 0.8"):
        relabel_with_teacher.fn(resolve_workload(settings, SPEC.name, SPEC), selected, "run2")


def test_warm_start_replay_sample_keeps_every_label():
    import pandas as pd

    from slm_flywheel.models.retrain import replay_sample

    rows = pd.DataFrame({"id": [str(i) for i in range(300)], "text": [f"t{i}" for i in range(300)], "label": ["common"] * 290 + [f"rare{i}" for i in range(10)]})
    sample = replay_sample(rows, 20, per_label=1)
    assert set(sample["label"]) == set(rows["label"])  # every rare label survives a 20-row sample
    assert len(sample) == 20 and sample["id"].is_unique
    assert sample.equals(replay_sample(rows, 20, per_label=1))  # seeded
    assert len(replay_sample(rows, 500, per_label=1)) == 300


def test_the_simulated_teacher_takes_its_error_rate_and_latency_from_the_config(tmp_path, data_dir):
    from slm_flywheel.models.teacher import ground_truth_path
    from slm_flywheel.tasks.relabel import build_teacher

    settings = load_settings(REPO / "flywheel.yaml", home=tmp_path, data_dir=data_dir)
    teacher_config = settings.workload("banking-intent").teacher
    settings.workload("banking-intent").teacher = teacher_config.model_copy(update={"simulated_error_rate": 0.2, "simulated_latency_s": 0.25})
    ground_truth_path(settings.home).parent.mkdir(parents=True)
    ground_truth_path(settings.home).write_text("")
    teacher = build_teacher(resolve_workload(settings, SPEC.name, SPEC), "relabel")
    assert isinstance(teacher, SimulatedTeacher) and "SIMULATED" in teacher.name
    assert (teacher.error_rate, teacher.latency_s) == (0.2, 0.25)
