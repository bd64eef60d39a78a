import pytest
import yaml

from tests.conftest import REPO


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    """One ephemeral Prefect API for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir, data_dir, tracking_uri):
    """The checked-in flywheel.yaml, pointed at the tiny model and CI-sized."""
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(tmp_path / "state"), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=tracking_uri)
    for workload in data["workloads"].values():
        workload["splits"]["golden_fraction"] = 0.01
        workload["training"].update(max_examples=48, batch_size=8, lora_r=4, lora_alpha=8, bf16=False)
        workload["training"].pop("lora_layers", None)
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
