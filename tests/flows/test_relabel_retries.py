"""A frontier outage during relabelling, against a real OpenAI-compatible server on loopback:
Prefect retries the task, and the retry pays only for the items the outage left unlabelled (the
per-text label cache keeps the answers already paid for). The last attempt goes on without them."""

from __future__ import annotations

import pandas as pd
import pytest
from prefect import flow
from prefect.logging import disable_run_logger
from prefect.states import Failed

from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.workload import TaskSpec
from slm_flywheel.serving.server import BackgroundServer
from slm_flywheel.tasks.relabel import RELABEL_RETRIES, FrontierOutage, TeacherDistrustError, _frontier_outage, relabel_with_teacher
from tests.integration.test_costs import WORKLOAD, _settings, spec  # noqa: F401  (spec is a fixture)
from tests.integration.test_teacher import KEY, FakeProvider

ITEMS = 12  # three calls of four items


def _relabel(context, selected):
    relabel = relabel_with_teacher.with_options(retry_delay_seconds=0)

    @flow
    def relabel_flow():
        return relabel(context, selected, "run1", return_state=True)

    return relabel_flow()


@pytest.fixture
def selected(spec):  # noqa: F811
    texts = [f"my new card has still not arrived, case {i}" for i in range(ITEMS)]
    gold = {text: {"label": spec.labels[i % 3]} for i, text in enumerate(texts)}
    return pd.DataFrame({"request_id": [f"r{i}" for i in range(ITEMS)], "input": texts}), gold


def _context(tmp_path, url, spec, tiny_model_dir, data_dir, tracking_uri):  # noqa: F811
    settings = _settings(tmp_path, url, tiny_model_dir, data_dir, tracking_uri)
    config = settings.workload(WORKLOAD)
    # One call at a time, no SDK retries: the fault numbers below are the calls that fail.
    teacher = config.teacher.model_copy(update={"max_retries": 0, "max_concurrency": 1})
    settings.workloads[WORKLOAD] = config.model_copy(update={"teacher": teacher})
    return resolve_workload(settings, WORKLOAD, spec)


def test_an_outage_is_retried_by_prefect_and_no_item_is_paid_twice(tmp_path, spec, selected, tiny_model_dir, data_dir, tracking_uri, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FLYWHEEL_TEACHER_API_KEY", KEY)
    rows, gold = selected
    provider = FakeProvider(gold, faults={2: "500"})
    with BackgroundServer(provider.app) as server:
        state = _relabel(_context(tmp_path, server.url, spec, tiny_model_dir, data_dir, tracking_uri), rows)
    assert state.is_completed(), state.message
    result = state.result()
    assert provider.faults_served == ["500"]
    assert len(provider.billed) == 3  # every item paid once: the retry asked only the failed call's four
    assert provider.requests == 4
    assert (result.selected, result.valid, result.cached) == (ITEMS, ITEMS, ITEMS - 4)
    assert sorted(result.labelled["label"]) == sorted(gold[text]["label"] for text in rows["input"])


def test_the_last_attempt_goes_on_with_what_was_answered(tmp_path, spec, selected, tiny_model_dir, data_dir, tracking_uri, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FLYWHEEL_TEACHER_API_KEY", KEY)
    rows, _ = selected
    # The same four items fail on the first attempt and on each of the retries.
    provider = FakeProvider(selected[1], faults={2: "500", **{4 + n: "500" for n in range(RELABEL_RETRIES)}})
    with BackgroundServer(provider.app) as server:
        state = _relabel(_context(tmp_path, server.url, spec, tiny_model_dir, data_dir, tracking_uri), rows)
    assert state.is_completed(), state.message
    result = state.result()
    assert provider.faults_served == ["500"] * (1 + RELABEL_RETRIES)
    assert len(provider.billed) == 2
    assert (result.selected, result.valid) == (ITEMS, ITEMS - 4)


def test_only_an_outage_is_retried():
    with disable_run_logger():
        assert _frontier_outage(None, None, Failed(data=FrontierOutage("down")))
        assert not _frontier_outage(None, None, Failed(data=TeacherDistrustError("agreement 0.4")))
        assert not _frontier_outage(None, None, Failed(data=ValueError("a bug")))


def test_an_item_the_simulated_teacher_has_no_gold_for_is_not_an_outage(tmp_path, data_dir):
    """Captured rows the simulator did not send (a push's smoke test) have no gold: the SIMULATED
    teacher leaves them unlabelled and the task is not retried for them."""
    import json

    from prefect.client.orchestration import get_client

    from slm_flywheel.config import load_settings
    from slm_flywheel.models.teacher import ground_truth_path
    from tests.conftest import REPO

    settings = load_settings(REPO / "flywheel.yaml", home=tmp_path, data_dir=data_dir)
    spec = TaskSpec(WORKLOAD, "classification", "{text}", labels=("card_arrival", "exchange_rate"))
    ground_truth_path(settings.home).parent.mkdir(parents=True)
    ground_truth_path(settings.home).write_text("".join(json.dumps({"request_id": f"r{i}", "gold": spec.labels[i % 2]}) + "\n" for i in range(3)))
    rows = pd.DataFrame({"request_id": ["r0", "r1", "r2", "smoke-1"], "input": ["a", "b", "c", "smoke text"]})
    state = _relabel(resolve_workload(settings, WORKLOAD, spec), rows)
    assert state.is_completed(), state.message
    assert (state.result().selected, state.result().valid) == (4, 3)
    with get_client(sync_client=True) as client:
        assert client.read_task_run(state.state_details.task_run_id).run_count == 1
