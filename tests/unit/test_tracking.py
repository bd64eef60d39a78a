"""MLflow helpers, against a real (temporary SQLite) tracking store."""

from pathlib import Path

from slm_flywheel.config import load_settings
from slm_flywheel.tracking import experiment_id, log_files, log_metrics, mlflow_client

REPO = Path(__file__).resolve().parents[2]


def test_metrics_and_files_land_on_the_run_under_their_names(tmp_path, tracking_uri):
    settings = load_settings(REPO / "flywheel.yaml", home=tmp_path / "home", tracking_uri=tracking_uri)
    client = mlflow_client(settings)
    experiment = experiment_id(client, settings, "banking-intent")
    assert experiment_id(client, settings, "banking-intent") == experiment  # found, not created twice
    run_id = client.create_run(experiment).info.run_id
    log_metrics(client, run_id, {"accuracy": 0.5, "drifted": True}, prefix="gate_")
    log_files(client, run_id, {"decision.json": '{"promote": true}', "plot.png": b"\x89PNG"}, "gate")
    client.set_terminated(run_id, "FINISHED")
    assert client.get_run(run_id).data.metrics == {"gate_accuracy": 0.5, "gate_drifted": 1.0}
    assert sorted(f.path for f in client.list_artifacts(run_id, "gate")) == ["gate/decision.json", "gate/plot.png"]
    local = Path(client.download_artifacts(run_id, "gate", str(tmp_path / "out")))
    assert (local / "decision.json").read_text() == '{"promote": true}' and (local / "plot.png").read_bytes() == b"\x89PNG"
