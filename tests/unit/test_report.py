"""The demo's final report: markdown with plots beside it, self-contained HTML, the CLI's table."""

from __future__ import annotations

import re

from rich.console import Console

from flywheel.report import difference_ci95, summary_table, write_reports


def _test(name, effect, threshold, p, drifted):
    # The keys of `DriftReport.to_dict()["tests"]` items (p_value is Holm-corrected there).
    return {"name": name, "statistic": effect, "effect": effect, "threshold": threshold, "p_value": p, "significant": p < 0.05, "drifted": drifted, "detail": {"p_value_uncorrected": p / 4}}


FULL = {
    "workload": "banking-intent",
    "scenario": "prior-shift",
    "fast": False,
    "home": "/abs/.flywheel/demo",
    "teacher": "simulated-teacher (SIMULATED frontier model)",
    "launch_drift_detected": False,
    "drift_detected": True,
    "drift_reason": "drift in input_mmd (effect 0.0412 >= 0.002, p=0.0199)",
    "champion_version": 1,
    "candidate_version": 2,
    "promoted_version": 2,
    "gate_reasons": ["candidate beats champion on the drift slice by +0.1910 (p=0.000244) with no regression"],
    "relabeled": 300,
    "teacher_cost": 0.15,
    "teacher_cached": 0,
    "to_review": 15,
    "live_accuracy_launch": 0.713,
    "live_accuracy_before": 0.27,
    "live_accuracy_after": 0.5,
    "live_accuracy_rollback": 0.48,
    "champion_drift_accuracy": 0.2697,
    "candidate_drift_accuracy": 0.4607,
    "drift_tests": {
        "launch": [_test("input_mmd", 0.0011, 0.002, 0.41, False), _test("label_js", 0.02, 0.1, 0.6, False), _test("confidence_ks", 0.04, 0.1, 0.9, False), _test("low_confidence_share", 0.01, 0.05, 1.0, False)],
        "drifted": [
            _test("input_mmd", 0.0412, 0.002, 0.0199, True),
            {"name": "label_js", "statistic": 0.52, "effect": 0.52, "threshold": 0.1, "p_value": 0.005, "p_adjusted": 0.0199, "drifted": True},
            _test("confidence_ks", 0.12, 0.1, 0.0199, True),
            _test("low_confidence_share", 0.03, 0.05, 0.02, False),
        ],
    },
    "gate_metrics": {
        "base_golden_headline": 0.01, "champion_golden_headline": 0.588, "candidate_golden_headline": 0.618,
        "base_drift_headline": 0.0, "champion_drift_headline": 0.27, "candidate_drift_headline": 0.46,
        "drift_gain": 0.191, "mcnemar_p": 0.000244, "candidate_latency_p95_ms": 120.0,
    },
    "timeline": [
        {"phase": "launch", "requests": 300, "live_accuracy": 0.713, "served_by": "banking-intent@v1"},
        {"phase": "drift", "requests": 400, "live_accuracy": 0.27, "served_by": "banking-intent@v1"},
        {"phase": "after retrain", "requests": 400, "live_accuracy": 0.5, "served_by": "banking-intent@v2"},
        {"phase": "bad promotion", "requests": 200, "live_accuracy": 0.1, "served_by": "banking-intent@v3"},
        {"phase": "after rollback", "requests": 200, "live_accuracy": 0.48, "served_by": "banking-intent@v2"},
    ],
    "history": [
        {"action": "bootstrap", "actor": "train-adapter (launch)", "at": "2026-11-28T16:00:00+00:00", "from_version": None, "to_version": 1, "reason": "first champion", "evidence": {}},
        {"action": "promote", "actor": "nightly-retrain (auto)", "at": "2026-11-28T17:00:00+00:00", "from_version": 1, "to_version": 2, "reason": "gate passed | drift slice +0.19", "evidence": {"drift_gain": 0.191}},
        {"action": "rollback", "actor": "rollback-guard", "at": "2026-11-28T17:30:00+00:00", "from_version": 3, "to_version": 2, "reason": "teacher agreement fell", "evidence": {}},
    ],
    "rollback": {"bad_version": 3, "restored_version": 2, "reasons": ["teacher agreement fell from 0.95 to 0.40"], "completed": True},
    "rollback_completed": True,
    "stage_seconds": {"pull base model": 0.0, "train launch champion": 250.7, "traffic: drift (prior-shift)": 40.2, "nightly-retrain": 300.1, "promote and push": 3.0},
}

# What a `--fast` run that did not promote (and had no rollback act) may leave.
MINIMAL = {
    "workload": "banking-intent", "scenario": "prior-shift", "fast": True, "teacher": "", "drift_detected": False,
    "champion_version": 1, "candidate_version": None, "promoted_version": None, "gate_reasons": [], "relabeled": 0,
    "teacher_cost": 0.0, "live_accuracy_launch": None, "live_accuracy_before": 0.3, "live_accuracy_after": None,
    "champion_drift_accuracy": None, "candidate_drift_accuracy": None, "drift_tests": None, "gate_metrics": None,
    "timeline": None, "history": None, "rollback": None, "rollback_completed": False, "stage_seconds": {},
}


def test_full_report_writes_markdown_with_plot_files_and_self_contained_html(tmp_path):
    paths = write_reports(FULL, tmp_path)
    assert paths["markdown"] == tmp_path / "report.md" and paths["html"] == tmp_path / "report.html"
    assert {name for name in paths if name.startswith("plot:")} == {"plot:drift", "plot:live_accuracy", "plot:teacher", "plot:gate"}
    md, page = paths["markdown"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    for name in ("drift", "live_accuracy", "teacher", "gate"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"](plots/{name}.png)" in md
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 4
    assert "plots/" not in page  # nothing outside the file

    # The margin comes with its 95% interval from the traffic counts (400 requests each side).
    assert "0.270 → 0.500 (+23.0 points, 95% CI +16.3 to +29.4: a real gain)" in md
    assert "SIMULATED frontier model" in md and "$0.15" in md
    assert ".venv/bin/prefect server start" in md and "http://127.0.0.1:4200" in md
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api make demo" in md
    assert ".venv/bin/mlflow ui --backend-store-uri sqlite:////abs/.flywheel/demo/mlflow.db" in md and "http://127.0.0.1:5000" in md
    # The registry history is a table; a "|" inside a reason does not break it.
    assert "| 2026-11-28T17:00:00+00:00 | nightly-retrain (auto) | promote | v1 → v2 | gate passed \\| drift slice +0.19 |" in md
    assert "| train launch champion | 250.7 |" in md
    assert "v3 was promoted on purpose" in md and "teacher agreement fell from 0.95 to 0.40" in md
    assert "while the bad version served: 0.480" in md
    assert "SIMULATED" in page and "0.270 → 0.500" in page and "<code>.venv/bin/prefect server start</code>" in page


def test_minimal_report_says_na_and_skips_the_plots_it_cannot_draw(tmp_path):
    paths = write_reports(MINIMAL, tmp_path)
    md = paths["markdown"].read_text(encoding="utf-8")
    assert set(paths) == {"markdown", "html", "plot:live_accuracy"}  # only live accuracy has data
    assert "| promoted version | n/a |" in md
    assert "0.300 → n/a" in md
    assert "Nothing was promoted" in md and "not run in this demo" in md
    assert "SIMULATED" in md and "sqlite:///.flywheel/demo/mlflow.db" in md
    write_reports({}, tmp_path / "empty")  # nothing at all still renders


def test_a_plot_draws_whatever_fields_exist(tmp_path):
    partial = {
        "drift_tests": {"drifted": [{"name": "input_mmd", "effect": 0.1}]},  # no threshold: nothing to plot
        "gate_metrics": {"candidate_drift_headline": 0.4},
        "relabeled": 5,
        "timeline": [{"phase": "launch", "live_accuracy": None}],
    }
    paths = write_reports(partial, tmp_path)
    assert {name for name in paths if name.startswith("plot:")} == {"plot:gate", "plot:teacher"}
    assert "5 labels, simulated cost n/a" in paths["markdown"].read_text(encoding="utf-8")


def test_summary_table_has_the_headline_rows_then_seconds_per_stage():
    console = Console(width=200, record=True)
    console.print(summary_table(FULL))
    text = console.export_text()
    for row in ("drift detected", "promoted version", "live accuracy before → after", "rollback completed", "teacher (SIMULATED)", "total seconds"):
        assert row in text
    assert "0.270 → 0.500 (+23.0 points, 95% CI +16.3 to +29.4: a real gain)" in text and "v2" in text and "yes (v3 → v2)" in text
    assert "$0.15" in text and "594" in text  # total of the stage seconds
    assert text.index("total seconds") < text.index("seconds: train launch champion")
    console.print(summary_table(MINIMAL))
    assert "n/a" in console.export_text()


def test_difference_interval_matches_newcombes_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 vs 48/80 -> 0.0524 to 0.3339.
    low, high = difference_ci95(48 / 80, 80, 56 / 70, 70)
    assert round(low, 4) == 0.0524 and round(high, 4) == 0.3339
    # Small samples: a 3.5-point move on 160 and 60 requests is noise, and the interval says so.
    low, high = difference_ci95(0.131, 160, 0.167, 60)
    assert low < 0 < high
