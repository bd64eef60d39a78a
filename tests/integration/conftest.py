import pytest
import yaml

from tests.conftest import REPO


def write_serving_settings(folder, tiny_model_dir, data_dir, tracking_uri):
    """The checked-in flywheel.yaml on the tiny model, written out as a file (the CLI reads it)."""
    from slm_flywheel.config import load_settings

    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(folder / "state"), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=tracking_uri)
    data["serving"] = {"admin_token": "s3cret", "capture_flush_records": 50, "capture_flush_seconds": 0.5, "max_batch": 16}
    path = folder / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


@pytest.fixture
def serving_settings(tmp_path, tiny_model_dir, data_dir, tracking_uri):
    return write_serving_settings(tmp_path, tiny_model_dir, data_dir, tracking_uri)
