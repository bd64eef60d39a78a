import json
import random
from collections import Counter

import pytest

from slm_flywheel.config import load_settings
from slm_flywheel.models.scenarios import SCENARIOS, launch_plan, launch_training_set, rephrase, scenario_requests
from slm_flywheel.models.workload import build_task_spec, load_splits
from tests.conftest import REPO


@pytest.fixture(scope="module")
def banking(data_dir):
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    config = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", config, data_dir)
    splits = load_splits(spec, config, data_dir)
    return spec, config, splits, launch_plan(spec.task, spec.labels, config.launch)


def test_launch_data_under_represents_the_late_intents(banking):
    spec, config, splits, plan = banking
    assert len(plan.late_labels) == config.launch.late_count and set(plan.late_labels) <= set(spec.labels)
    assert plan == launch_plan(spec.task, spec.labels, config.launch)  # deterministic
    launch = launch_training_set(splits["train"], plan, 2000, seed=1)
    counts = Counter(launch["label"])
    assert len(launch) == 2000
    assert all(counts[label] <= config.launch.rare_cap for label in plan.late_labels)
    usual = [counts[label] for label in spec.labels if label not in plan.late_labels]
    assert min(usual) >= 20  # the other 65 intents share the rest
    assert not set(launch["id"]) & set(splits["golden"]["id"])


def test_prior_shift_concentrates_on_late_intents_and_steady_does_not(banking):
    spec, config, splits, plan = banking
    steady = scenario_requests(splits["train"], plan, "steady", 1000, seed=3)
    shifted = scenario_requests(splits["train"], plan, "prior-shift", 1000, seed=3)
    late_share = lambda reqs: sum(r.gold in plan.late_labels for r in reqs) / len(reqs)  # noqa: E731
    assert late_share(steady) < 0.06
    assert abs(late_share(shifted) - config.launch.shift_share) < 0.05
    golden = set(splits["golden"]["id"])
    assert all(r.source_id not in golden for r in shifted)


def test_new_phrasing_rewrites_inputs_but_keeps_gold(banking):
    spec, config, splits, plan = banking
    requests = scenario_requests(splits["train"], plan, "new-phrasing", 200, seed=4)
    originals = dict(zip(splits["train"]["id"], splits["train"]["text"]))
    changed = sum(r.text != originals[r.source_id] for r in requests)
    assert changed >= 190
    assert all(r.text == r.text.lower() or r.text.startswith(("hey", "hi", "ok", "hello")) for r in requests)
    assert all(r.gold in spec.labels for r in requests)


def test_rephrase_is_seeded():
    text = "Please tell me why my transfer is still pending, I need the money today."
    assert rephrase(text, random.Random(1)) == rephrase(text, random.Random(1))
    assert rephrase(text, random.Random(1)) != text


def test_restaurant_prior_shift_favours_bookings_with_names(data_dir):
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    config = settings.workload("restaurant-slots")
    spec = build_task_spec("restaurant-slots", config, data_dir)
    splits = load_splits(spec, config, data_dir)
    plan = launch_plan(spec.task, spec.labels, config.launch)
    has_name = lambda label: any(k in json.loads(label) for k in ("first_name", "last_name"))  # noqa: E731
    launch = launch_training_set(splits["train"], plan, 1500, seed=1)
    assert sum(map(has_name, launch["label"])) == config.launch.rare_cap
    shifted = scenario_requests(splits["train"], plan, "prior-shift", 500, seed=2)
    assert sum(has_name(r.gold) for r in shifted) / 500 > 0.6
    with pytest.raises(ValueError, match="unknown scenario 'new-phrasing' for a extraction workload"):
        scenario_requests(splits["train"], plan, "new-phrasing", 5, seed=2)
    assert SCENARIOS["extraction"] == ("steady", "prior-shift")
