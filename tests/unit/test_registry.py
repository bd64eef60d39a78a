"""Bootstrap / challenger logic against a real temporary registry, on SQLite and on PostgreSQL."""

import pytest
from mlflow import MlflowClient

from slm_flywheel.models.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    assign_initial_alias,
    download_adapter,
    get_version,
    parse_model_ref,
    register_adapter,
)
from tests.conftest import BACKENDS, registry_uri, run_with_adapter


@pytest.fixture(params=BACKENDS)
def tracking_uri(request, tmp_path):
    return registry_uri(request.param, tmp_path, request)


@pytest.fixture
def client(tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    return client


def test_first_version_becomes_champion_later_ones_challenger(client, tmp_path):
    first = register_adapter(client, "banking-intent", run_with_adapter(client, tmp_path, "1"), {"data_hash": "abc"})
    assert assign_initial_alias(client, "banking-intent", first.version) == CHAMPION
    second = register_adapter(client, "banking-intent", run_with_adapter(client, tmp_path, "2"), {"data_hash": "def"})
    assert assign_initial_alias(client, "banking-intent", second.version) == CHALLENGER
    third = register_adapter(client, "banking-intent", run_with_adapter(client, tmp_path, "3"), {})
    assert assign_initial_alias(client, "banking-intent", third.version) == CHALLENGER

    assert get_version(client, "banking-intent").version == first.version == 1
    assert get_version(client, "banking-intent", alias=CHALLENGER).version == 3  # the alias moved on
    assert get_version(client, "banking-intent", version=2).tags["data_hash"] == "def"
    # another workload bootstraps independently
    other = register_adapter(client, "restaurant-slots", run_with_adapter(client, tmp_path, "r"), {})
    assert assign_initial_alias(client, "restaurant-slots", other.version) == CHAMPION


def test_adapter_files_download_from_the_registered_version(client, tmp_path):
    version = register_adapter(client, "w", run_with_adapter(client, tmp_path, "x"), {})
    local = download_adapter(client, version, tmp_path / "cache")
    assert (local / "adapter_config.json").read_text() == '{"marker": "x"}'
    assert download_adapter(client, version, tmp_path / "cache") == local  # cached


def test_missing_versions_and_aliases_are_clear_errors(client, tmp_path):
    with pytest.raises(RegistryError, match="no alias @champion"):
        get_version(client, "nothing")
    register_adapter(client, "w", run_with_adapter(client, tmp_path, "x"), {})
    with pytest.raises(RegistryError, match="no version 7"):
        get_version(client, "w", version=7)


def test_parse_model_ref():
    assert parse_model_ref("models:/banking-intent@champion") == ("banking-intent", None, "champion")
    assert parse_model_ref("models:/banking-intent/3") == ("banking-intent", 3, None)
    with pytest.raises(RegistryError, match="not a registry reference"):
        parse_model_ref("runs:/abc/adapter")
