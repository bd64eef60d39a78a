import json

import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from slm_flywheel.flows.train_adapter import train_adapter_flow
from slm_flywheel.app.cli import app
from slm_flywheel.config import load_settings
from slm_flywheel.models.calibration import load_calibration
from slm_flywheel.models.context import resolve_workload
from slm_flywheel.models.registry import download_adapter, get_version


def test_train_adapter_registers_champion_then_challenger(tiny_config, tmp_path):
    data = yaml.safe_load(tiny_config.read_text())
    data["workloads"]["banking-intent"]["training_profiles"] = {"twice": {"epochs": 2}}
    tiny_config.write_text(yaml.safe_dump(data))
    settings = load_settings(tiny_config)
    first = train_adapter_flow(workload="banking-intent", config_path=str(tiny_config))
    second = train_adapter_flow(workload="banking-intent", config_path=str(tiny_config), max_examples=16, profile="twice")
    assert (first.version, first.alias) == (1, "champion")
    assert (second.version, second.alias) == (2, "challenger")
    assert 0.0 <= first.golden["accuracy"] <= 1.0 and "macro_f1" in first.golden

    client = MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)
    champion = client.get_model_version_by_alias("banking-intent", "champion")
    assert int(champion.version) == 1
    assert champion.tags["data_hash"] == first.data_hash
    assert champion.tags["base_model"] == settings.base_model
    assert float(champion.tags["golden_accuracy"]) == round(first.golden["accuracy"], 4)
    run = client.get_run(first.run_id)
    for param in ("base_model", "data_hash", "git_commit", "train_seed", "train_lora_r", "split_golden"):
        assert param in run.data.params, param
    assert run.data.params["train_examples"] == "48" and client.get_run(second.run_id).data.params["train_examples"] == "16"
    assert (run.data.params["train_epochs"], client.get_run(second.run_id).data.params["train_epochs"]) == ("1.0", "2.0")  # the profile
    assert "golden_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(first.run_id)} | {a.path for a in client.list_artifacts(first.run_id, "evaluation")}
    assert {"adapter", "evaluation/golden_breakdown.png", "evaluation/golden_eval_table.json"} <= artifacts
    table = json.loads(open(client.download_artifacts(first.run_id, "evaluation/golden_eval_table.json")).read())
    assert len(table) == 77  # every intent has a golden row

    # The calibrator and routing threshold travel inside the registered version's adapter folder.
    assert {"evaluation/reliability.png", "evaluation/risk_coverage.png"} <= artifacts
    calibration = load_calibration(download_adapter(client, get_version(client, "banking-intent", 1), tmp_path / "adapters"))
    assert calibration is not None and calibration.target_accuracy == settings.workload("banking-intent").router.target_accuracy
    assert calibration.examples == len(resolve_workload(settings, "banking-intent").splits["validation"]) and 0.0 <= calibration.coverage <= 1.0
    for metric in ("validation_ece_before", "validation_ece_after", "golden_ece_before", "golden_ece_after", "router_coverage"):
        assert 0.0 <= run.data.metrics[metric] <= 1.0, metric
    assert run.data.metrics["validation_ece_after"] == calibration.ece_after
    # Both evaluations of each version are cached (models/evaluation.py): the gate and a rerun reuse them.
    assert len(list(settings.eval_cache_dir.glob("*.json"))) == 4


def test_train_and_predict_from_the_cli(tiny_config, tmp_path):
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "restaurant-slots", "--config", str(tiny_config)])
    assert trained.exit_code == 0, trained.output
    assert "slot_f1" in trained.output and "champion" in trained.output

    one = runner.invoke(app, ["predict", "restaurant-slots", "Table for 4 at 7pm please", "--config", str(tiny_config)])
    assert one.exit_code == 0, one.output
    answer = json.loads(one.stdout.strip().splitlines()[-1])
    assert answer["version"] == 1 and 0.0 <= answer["confidence"] <= 1.0

    lines = [{"text": "Table for 2 tonight"}, {"text": "Book for Ann Lee"}, {"text": "8 people at noon"}]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    batch = runner.invoke(app, ["predict", "restaurant-slots", "--input", str(source), "--output", str(target), "--alias", "champion", "--config", str(tiny_config)])
    assert batch.exit_code == 0, batch.output
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["text"] for row in rows] == [line["text"] for line in lines]
    for row in rows:
        assert row["answer"] is None or isinstance(row["answer"], dict)


def test_cli_rejects_unknown_workload_and_missing_version(tiny_config):
    runner = CliRunner()
    unknown = runner.invoke(app, ["train", "nope", "--config", str(tiny_config)])
    assert unknown.exit_code == 2 and "unknown workload 'nope'" in unknown.output
    profile = runner.invoke(app, ["train", "banking-intent", "--profile", "huge", "--config", str(tiny_config)])
    assert profile.exit_code == 2 and "unknown training profile 'huge'; this workload has: default, full" in profile.output
    missing = runner.invoke(app, ["predict", "banking-intent", "hi", "--version", "9", "--config", str(tiny_config)])
    assert missing.exit_code == 2 and "no version 9" in missing.output  # a registry mistake: one line, exit 2


def test_two_trainings_registering_at_once_make_one_champion(tracking_uri, tmp_path, monkeypatch):
    """Two trainings of a workload without a champion reach their alias at the same moment.

    Each registration, having read the `champion` alias, waits for the other to read it too; only
    a lock around the read and the write keeps the second out (its wait then gives up), so one
    version becomes champion, the other challenger, and the history starts once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import slm_flywheel.models.registry as registry
    from slm_flywheel.models.promotion import history
    from slm_flywheel.tasks.training import set_initial_alias
    from tests.conftest import run_with_adapter

    client = MlflowClient(tracking_uri, tracking_uri)
    client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    versions = [registry.register_adapter(client, "banking-intent", run_with_adapter(client, tmp_path, marker), {}).version for marker in ("a", "b")]

    both_read = threading.Barrier(2)
    real = registry.alias_version

    def read_then_wait_for_the_other(client_, name, alias):
        found = real(client_, name, alias)
        if alias == registry.CHAMPION:
            try:
                both_read.wait(timeout=5)
            except threading.BrokenBarrierError:  # the other one is kept out (or has given up)
                pass
        return found

    monkeypatch.setattr(registry, "alias_version", read_then_wait_for_the_other)
    with ThreadPoolExecutor(max_workers=2) as pool:
        aliases = list(pool.map(lambda version: set_initial_alias(client, "banking-intent", version), versions))
    assert sorted(aliases) == [registry.CHALLENGER, registry.CHAMPION]
    champion = versions[aliases.index(registry.CHAMPION)]
    assert int(client.get_model_version_by_alias("banking-intent", registry.CHAMPION).version) == champion
    assert [(entry.action, entry.to_version) for entry in history(client, "banking-intent")] == [("bootstrap", champion)]
