"""Rollback with the real base model: a reviewer promotes a bad adapter (trained on shuffled
labels); live traffic shows it; `rollback-guard` puts the previous champion back everywhere."""

import random

import httpx
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from slm_flywheel.flows.promote import promote
from slm_flywheel.flows.rollback_guard import rollback_guard
from slm_flywheel.flows.train_adapter import train_adapter_flow
from slm_flywheel.config import load_settings
from slm_flywheel.app.simulate import simulate
from slm_flywheel.models.data import load_banking77
from slm_flywheel.models.promotion import history
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.server import BackgroundServer, build_state, free_port
from tests.conftest import REPO

pytestmark = pytest.mark.slow
INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed", "pin_blocked", "refund_not_showing_up", "cash_withdrawal_charge", "change_pin"]


@pytest.fixture
def config_path(tmp_path, real_base_model, data_dir, tracking_uri):
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    port = free_port()
    data.update(home=str(tmp_path / "state"), base_model=real_base_model, data_dir=str(data_dir), tracking_uri=tracking_uri)
    data["serving"] = {"port": port, "replicas": [f"http://127.0.0.1:{port}"], "capture_flush_seconds": 0.3}
    workload = data["workloads"]["banking-intent"]
    workload["labels"] = INTENTS  # an 8-intent slice keeps training to a minute
    workload["training"].update(max_examples=320, epochs=2, lora_layers=15)  # the top half: 1.6x faster
    workload["guard"] = {"min_samples": 60, "audit_budget": 30, "min_audited": 20}
    workload["launch"] = {"late_count": 2, "rare_cap": 40, "shift_share": 0.3}
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_bad_promotion_is_rolled_back_in_registry_and_serving(config_path, data_dir, tmp_path):
    settings = load_settings(config_path)
    good = train_adapter_flow(workload="banking-intent", config_path=str(config_path))
    assert good.golden["accuracy"] > 0.6
    rows = load_banking77(data_dir).filter(lambda r: r["label"] in INTENTS).to_pandas().sample(n=160, random_state=1)  # shuffled: half the good set is bad enough
    shuffled = rows["label"].tolist()
    random.Random(2).shuffle(shuffled)
    bad_set = tmp_path / "shuffled.parquet"
    pd.DataFrame({"id": rows["id"].astype(str), "text": rows["text"], "label": shuffled}).to_parquet(bad_set)
    bad = train_adapter_flow(workload="banking-intent", config_path=str(config_path), training_set_path=str(bad_set))
    assert (good.version, bad.version) == (1, 2)

    state = build_state(settings, "replica-0")  # serves the champion, v1
    with BackgroundServer(create_app(state), port=settings.serving.port) as server:
        assert simulate(settings, "banking-intent", "steady", 80, server.url, seed=1).failed == 0
        state.writer.flush()
        # A reviewer overrides the gate and promotes the bad version.
        promote(workload="banking-intent", version=2, reviewer="overconfident-reviewer", reason="override", config_path=str(config_path))
        assert simulate(settings, "banking-intent", "steady", 80, server.url, seed=2).failed == 0
        state.writer.flush()
        result = rollback_guard(config_path=str(config_path))["banking-intent"]
        assert result.trip and result.checked, result
        routes = httpx.get(f"{server.url}/v1/workloads").json()["workloads"]
        assert routes["banking-intent"] == "banking-intent@v1"
        # Once rolled back, the guard does not act again (no flapping).
        assert rollback_guard(config_path=str(config_path))["banking-intent"].checked is False
    state.engine.close()
    state.writer.close()

    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    assert int(client.get_model_version_by_alias("banking-intent", "champion").version) == 1
    bad_version = client.get_model_version("banking-intent", "2")
    assert "teacher agreement fell" in bad_version.tags["rolled_back"] or "confidence fell" in bad_version.tags["rolled_back"]
    moves = [(e.action, e.actor, e.from_version, e.to_version) for e in history(client, "banking-intent")]
    assert moves == [("bootstrap", "train-adapter", None, 1), ("promote", "overconfident-reviewer", 1, 2), ("rollback", "rollback-guard", 2, 1)]
