from pathlib import Path

import pytest
import yaml

from slm_flywheel.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _checked_in() -> dict:
    return yaml.safe_load((REPO / "flywheel.yaml").read_text())


def test_checked_in_config_loads_both_workloads():
    settings = load_settings(REPO / "flywheel.yaml")
    assert set(settings.workloads) == {"banking-intent", "restaurant-slots"}
    assert settings.workload("banking-intent").task == "classification"
    assert settings.workload("restaurant-slots").slots == ["people", "time", "date", "first_name", "last_name"]
    assert settings.resolved_tracking_uri.startswith("sqlite:///") and settings.resolved_tracking_uri.endswith("mlflow.db")


def test_bad_value_is_rejected_naming_the_field(tmp_path):
    data = _checked_in()
    data["workloads"]["banking-intent"]["training"]["learning_rate"] = -1
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, data))
    assert "workloads.banking-intent.training.learning_rate" in str(info.value)


def test_unknown_field_is_rejected_naming_it(tmp_path):
    data = _checked_in()
    data["workloads"]["restaurant-slots"]["training"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, data))
    assert "workloads.restaurant-slots.training.learning_rat" in str(info.value)


def test_incoherent_workload_is_rejected(tmp_path):
    data = _checked_in()
    del data["workloads"]["restaurant-slots"]["slots"]
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, data))
    assert "workloads.restaurant-slots" in str(info.value) and "slots" in str(info.value)


def test_prompt_without_placeholder_is_rejected(tmp_path):
    data = _checked_in()
    data["workloads"]["banking-intent"]["prompt_template"] = "Intent:"
    with pytest.raises(ConfigError, match=r"workloads.banking-intent.*\{text\}"):
        load_settings(_write(tmp_path, data))


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("FLYWHEEL_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("FLYWHEEL_WORKLOADS__banking-intent__TRAINING__MAX_EXAMPLES", "123")
    settings = load_settings(REPO / "flywheel.yaml")
    assert settings.home == tmp_path / "state"
    assert settings.resolved_tracking_uri == "http://127.0.0.1:5999"
    assert settings.workload("banking-intent").training.max_examples == 123
    # the rest of the workload still comes from the file
    assert settings.workload("banking-intent").training.lora_r == 16


def test_missing_explicit_file_and_unknown_workload(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    settings = load_settings(REPO / "flywheel.yaml")
    with pytest.raises(ConfigError, match="unknown workload 'nope'"):
        settings.workload("nope")


def test_malformed_yaml_is_rejected(tmp_path):
    path = tmp_path / "flywheel.yaml"
    path.write_text("workloads: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path)


def test_training_profile_changes_only_its_fields_and_unknown_names_are_listed(tmp_path):
    data = _checked_in()
    data["workloads"]["banking-intent"]["training_profiles"] = {"big": {"epochs": 3, "max_examples": 9000}}
    workload = load_settings(_write(tmp_path, data)).workload("banking-intent")
    big, default = workload.training_for("big"), workload.training_for("default")
    assert (big.epochs, big.max_examples) == (3, 9000)
    assert big.model_dump(exclude={"epochs", "max_examples"}) == default.model_dump(exclude={"epochs", "max_examples"})
    assert default == workload.training
    with pytest.raises(ConfigError, match=r"unknown training profile 'huge'.*default, big"):
        workload.training_for("huge")


def test_bad_training_profile_is_rejected_naming_it(tmp_path):
    data = _checked_in()
    data["workloads"]["banking-intent"]["training_profiles"] = {"big": {"epochs": -1}}
    with pytest.raises(ConfigError, match=r"workloads.banking-intent.*training profile 'big'.*epochs"):
        load_settings(_write(tmp_path, data))
    data["workloads"]["banking-intent"]["training_profiles"] = {"default": {"epochs": 2}}
    with pytest.raises(ConfigError, match="cannot redefine `default`"):
        load_settings(_write(tmp_path, data))
