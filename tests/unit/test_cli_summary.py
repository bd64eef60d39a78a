"""The nightly summary table renders every list field, drift tests (dicts) included."""

from slm_flywheel.app.cli import _summary_cell


def test_a_drift_test_renders_as_name_p_effect_and_verdict():
    test = {"name": "input_mmd", "statistic": 0.02, "p_value": 0.0012, "effect": 0.0149, "threshold": 0.01, "significant": True, "drifted": True}
    assert _summary_cell(test) == "input_mmd p=0.0012 effect=0.0149 (drift)"
    assert _summary_cell({**test, "drifted": False}).endswith("(ok)")


def test_plain_entries_render_as_text():
    assert _summary_cell("samples/x.parquet: unreadable Parquet") == "samples/x.parquet: unreadable Parquet"
