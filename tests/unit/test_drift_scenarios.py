"""The simulator's own scenarios against the launch champion's reference, at the default window
size and thresholds: steady stays quiet, prior-shift and new-phrasing alarm."""

import numpy as np
import pytest

from slm_flywheel.config import load_settings
from slm_flywheel.config import DriftConfig
from slm_flywheel.models.drift import DriftReference, DriftWindow, Embedder, detect_drift
from slm_flywheel.models.scenarios import launch_plan, launch_training_set, scenario_requests
from slm_flywheel.models.workload import build_task_spec, load_splits
from tests.conftest import REPO


@pytest.fixture(scope="module")
def setting(data_dir):
    settings = load_settings(REPO / "flywheel.yaml", data_dir=data_dir)
    config = settings.workload("banking-intent")
    spec = build_task_spec("banking-intent", config, data_dir)
    splits = load_splits(spec, config, data_dir)
    plan = launch_plan(spec.task, spec.labels, config.launch)
    launch = launch_training_set(splits["train"], plan, 600, seed=1)
    embedder = Embedder()
    # Gold labels stand in for the champion's answers; a constant confidence keeps the
    # confidence tests out of it: this checks the input and answer tests on real scenarios.
    reference = DriftReference(embedder.encode(list(launch["text"])), list(launch["label"]), np.full(len(launch), 0.9))
    return splits, plan, reference, embedder


@pytest.mark.parametrize("scenario, expect", [("steady", set()), ("prior-shift", {"input_mmd", "label_js"}), ("new-phrasing", {"input_mmd"})])
def test_scenarios_at_the_default_window_size(setting, scenario, expect):
    splits, plan, reference, embedder = setting
    config = DriftConfig()
    requests = scenario_requests(splits["train"], plan, scenario, config.min_window, seed=11)
    window = DriftWindow(embedder.encode([r.text for r in requests]), [r.gold for r in requests], np.full(len(requests), 0.9))
    report = detect_drift(reference, window, config, "classification")
    drifted = {test.name for test in report.tests if test.drifted}
    assert report.window_size == config.min_window
    assert drifted >= expect if expect else drifted == set(), report.to_markdown()
    assert report.drifted == bool(expect)
