"""The command line's pure helpers: the nightly summary table renders every list field, drift tests
(dicts) included; `flywheel serve` derives the replica list from the address it serves."""

from slm_flywheel.app.cli import _served_settings, _summary_cell
from slm_flywheel.config import load_settings
from tests.conftest import REPO


def test_a_drift_test_renders_as_name_p_effect_and_verdict():
    test = {"name": "input_mmd", "statistic": 0.02, "p_value": 0.0012, "effect": 0.0149, "threshold": 0.01, "significant": True, "drifted": True}
    assert _summary_cell(test) == "input_mmd p=0.0012 effect=0.0149 (drift)"
    assert _summary_cell({**test, "drifted": False}).endswith("(ok)")


def test_plain_entries_render_as_text():
    assert _summary_cell("samples/x.parquet: unreadable Parquet") == "samples/x.parquet: unreadable Parquet"


def test_a_default_replica_follows_the_served_address_and_an_explicit_list_is_kept():
    settings = load_settings(REPO / "flywheel.yaml")
    assert settings.serving.replicas == ["http://127.0.0.1:8000"]
    assert _served_settings(settings, None, 8100).serving.replicas == ["http://127.0.0.1:8100"]
    assert _served_settings(settings, "0.0.0.0", 8100).serving.replicas == ["http://127.0.0.1:8100"]
    fleet = settings.model_copy(update={"serving": settings.serving.model_copy(update={"replicas": ["http://gpu-1:8000", "http://gpu-2:8000"]})})
    assert _served_settings(fleet, None, 8100).serving.replicas == ["http://gpu-1:8000", "http://gpu-2:8000"]
