"""`nightly-retrain` end to end with the tiny model: real serving tier, simulator, simulated teacher."""

import dataclasses

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from slm_flywheel.data_contracts.contracts import ContractError
from slm_flywheel.flows.drift_check import drift_check
from slm_flywheel.flows.nightly_retrain import nightly_retrain
from slm_flywheel.flows.train_adapter import train_adapter_flow
from slm_flywheel.config import load_settings
from slm_flywheel.app.simulate import simulate
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.capture import read_samples
from slm_flywheel.models.promotion import history
from slm_flywheel.serving.server import BackgroundServer, build_state, free_port


def _configure(path, promotion="review", replica=None, router=None, **relabel):
    data = yaml.safe_load(path.read_text())
    workload = data["workloads"]["banking-intent"]
    workload["promotion"] = promotion
    workload["router"] = router or {"mode": "off"}
    if replica:
        data["serving"] = {"port": int(replica.rsplit(":", 1)[1]), "replicas": [replica], "capture_flush_seconds": 0.3}
    workload["drift"] = {"min_window": 80, "n_permutations": 100}
    workload["relabel"] = {"budget": 60, "review_share": 0.1, "min_per_label": 0, **relabel}
    workload["launch"] = {"late_count": 12, "rare_cap": 0, "shift_share": 0.9}
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


def _traffic(settings, scenario, count, seed):
    state = build_state(settings, "replica-t", bf16=False)
    with BackgroundServer(create_app(state)) as server:
        result = simulate(settings, "banking-intent", scenario, count, server.url, concurrency=4, seed=seed)
    state.engine.close()
    state.writer.close()
    assert result.failed == 0


@pytest.fixture
def gate_passes(monkeypatch):
    """The real gate runs (its metrics are kept) but its verdict is forced to a pass: these tests
    are about what the promotion policy does after a pass, which the tiny model cannot earn."""
    import slm_flywheel.flows.nightly_retrain

    real = slm_flywheel.flows.nightly_retrain.evaluate_candidate

    def passing(*args, **kwargs):
        decision = real(*args, **kwargs)
        return dataclasses.replace(decision, promote=True, reasons=["forced pass (test)", *decision.reasons])

    monkeypatch.setattr(slm_flywheel.flows.nightly_retrain, "evaluate_candidate", passing)


@pytest.fixture
def launched(tiny_config):
    settings = _configure(tiny_config)
    champion = train_adapter_flow(workload="banking-intent", config_path=str(tiny_config), launch=True)
    assert champion.alias == "champion"
    return settings


def test_steady_traffic_no_drift_then_prior_shift_drift_relabel_retrain_gate(launched, tiny_config, gate_passes):
    settings = launched  # review policy
    _traffic(settings, "steady", 120, seed=1)
    checked = drift_check(workload="banking-intent", config_path=str(tiny_config))
    assert checked.report.window_size == 120 and checked.report.drifted is False
    quiet = nightly_retrain(workload="banking-intent", config_path=str(tiny_config))
    assert quiet.window_size == 120 and not quiet.drift_detected
    assert quiet.candidate_version is None and quiet.relabeled == 0  # no retrain

    _traffic(settings, "prior-shift", 160, seed=2)
    summary = nightly_retrain(workload="banking-intent", config_path=str(tiny_config))
    assert summary.window_size == 160  # the watermark moved past the steady window
    assert summary.drift_detected, summary.drift_reason
    assert 0 < summary.relabeled <= 60 and summary.teacher_cost > 0
    assert "SIMULATED" in summary.teacher
    assert summary.candidate_version == 2 and summary.promote is True
    assert summary.champion_drift_accuracy is not None and summary.candidate_drift_accuracy is not None
    assert summary.promotion.startswith("awaiting review") and summary.promoted_version is None
    assert {t["name"] for t in summary.drift_tests} >= {"input_mmd", "confidence_ks"}

    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    candidate = client.get_model_version("banking-intent", "2")
    assert "challenger" in candidate.aliases and "champion" not in candidate.aliases  # the reviewer decides
    assert candidate.tags["awaiting_review"]
    assert candidate.tags["gate_promote"] in {"true", "false"} and candidate.tags["gate_reasons"]
    metrics = client.get_run(candidate.run_id).data.metrics
    assert {"gate_drift_gain", "gate_mcnemar_p", "gate_base_golden_accuracy", "gate_champion_drift_accuracy"} <= set(metrics)
    assert client.get_run(candidate.run_id).data.params["train_examples"] == str(summary.training_rows)

    # Each run ends with the cost ledger in MLflow (daily metrics): tonight's labels are relabel calls.
    experiment = client.get_experiment_by_name("slm-flywheel/banking-intent").experiment_id
    ledgers = client.search_runs([experiment], filter_string="tags.kind = 'cost-ledger'", order_by=["attributes.start_time DESC"])
    assert len(ledgers) == 2  # the quiet night's and tonight's

    def daily_sum(name):
        return sum(metric.value for metric in client.get_metric_history(ledgers[0].info.run_id, name))

    assert daily_sum("relabel_calls") == summary.relabeled and daily_sum("requests") == 280
    assert daily_sum("training_usd") > 0 and daily_sum("frontier_only_cost_usd") > 0


def test_contract_failure_stops_the_flow_naming_the_expectation(launched, tiny_config):
    settings = _configure(tiny_config, min_per_label=500)
    _traffic(settings, "prior-shift", 100, seed=3)
    with pytest.raises(ContractError, match="examples per label >= 500"):
        nightly_retrain(workload="banking-intent", config_path=str(tiny_config), force=True)
    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    assert len(client.search_model_versions("name='banking-intent'")) == 1  # nothing was trained


def test_rerun_after_a_training_crash_reuses_teacher_labels(launched, tiny_config, monkeypatch):
    import slm_flywheel.models.training

    settings = launched
    _traffic(settings, "prior-shift", 100, seed=4)
    real = slm_flywheel.models.training.train_lora

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(slm_flywheel.models.training, "train_lora", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        nightly_retrain(workload="banking-intent", config_path=str(tiny_config), force=True)
    monkeypatch.setattr(slm_flywheel.models.training, "train_lora", real)
    summary = nightly_retrain(workload="banking-intent", config_path=str(tiny_config), force=True)
    assert summary.window_size == 100  # the crashed run did not move the watermark
    assert summary.relabeled > 0
    assert summary.teacher_cost == 0.0 and summary.teacher_cached >= summary.relabeled  # no second charge
    assert summary.candidate_version == 2


def test_auto_policy_promotes_a_gate_pass_and_pushes_it_to_the_replica(launched, tiny_config, gate_passes):
    port = free_port()
    settings = _configure(tiny_config, promotion="auto", replica=f"http://127.0.0.1:{port}")
    state = build_state(settings, "replica-0", bf16=False)
    with BackgroundServer(create_app(state), port=port) as server:
        assert simulate(settings, "banking-intent", "prior-shift", 100, server.url, concurrency=4, seed=5).failed == 0
        state.writer.flush()
        summary = nightly_retrain(workload="banking-intent", config_path=str(tiny_config), force=True)
        assert summary.promote is True and summary.promoted_version == 2, summary.promotion
        assert httpx.get(f"{server.url}/v1/workloads").json()["workloads"]["banking-intent"] == "banking-intent@v2"
    state.engine.close()
    state.writer.close()
    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    assert int(client.get_model_version_by_alias("banking-intent", "champion").version) == 2
    assert int(client.get_model_version_by_alias("banking-intent", "previous-champion").version) == 1
    last = history(client, "banking-intent")[-1]
    assert (last.action, last.actor, last.from_version, last.to_version) == ("promote", "nightly-retrain (auto)", 1, 2)
    assert "drift_gain" in last.evidence


def test_frontier_answers_are_labels_the_teacher_is_never_paid_for(launched, tiny_config):
    import json

    from slm_flywheel.models.usage import usage_path
    from slm_flywheel.tasks.relabel import _cache_key

    settings = launched
    _traffic(settings, "prior-shift", 80, seed=6)  # router off: the small model answers
    # The tiny model reaches no accuracy target on validation: its calibration routes (nearly)
    # everything to the SIMULATED frontier, which answers from the simulator's gold.
    routed = _configure(tiny_config, router={"mode": "fallback", "requests_per_second": 1000})
    _traffic(routed, "prior-shift", 60, seed=7)
    rows = read_samples(settings.samples_dir, "banking-intent")
    frontier = rows[rows["served_by"] == "frontier"]
    assert len(frontier) > 0 and (rows["served_by"] == "slm").sum() >= 80

    summary = nightly_retrain(workload="banking-intent", config_path=str(tiny_config), force=True)
    assert summary.window_size == 140
    assert summary.router_labels > 0 and summary.router_labels_quarantined == 0
    assert summary.relabeled > 0 and summary.teacher_cost > 0  # the teacher labelled the small model's answers only
    assert summary.training_rows > 0 and summary.candidate_version == 2
    # No teacher label was bought for a text the frontier answered: not one in the per-text label
    # cache, and the usage log's paid relabel items are exactly the labels the teacher gave.
    cache = settings.state_dir / "teacher-labels" / "banking-intent"
    assert not [text for text in frontier["input"] if (cache / f"{_cache_key(summary.teacher, text)}.json").exists()]
    usage = [json.loads(line) for line in usage_path(settings.state_dir, "banking-intent").read_text().splitlines()]
    assert sum(record["items"] for record in usage if record["purpose"] == "relabel") == summary.relabeled
    # Router figures for the window: the router-off traffic is all small model, the rest mostly frontier.
    (today,) = summary.router
    assert today.version == "banking-intent@v1" and today.routed == 140 and today.frontier == len(frontier)
    assert today.frontier_share == len(frontier) / 140 and today.frontier_spend_usd > 0 and today.frontier_latency_ms is not None
