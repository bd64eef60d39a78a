"""The Prefect UI's run forms, checked without a screenshot: the parameter schema each deployment
of prefect.yaml gets from `prefect deploy` (built the way it builds it), for a person to fill in."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO

DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
ENTRYPOINTS = sorted({deployment["entrypoint"] for deployment in DEPLOYMENTS})
# What callers pass in code, never a person in a form.
INTERNAL = {"config_path", "evidence", "action", "training_set_path", "warm_start_adapter"}


def _form(entrypoint: str) -> dict:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(load_flow_from_entrypoint(entrypoint)).model_dump_for_openapi()


def _workload_choices(form: dict) -> list[list[str]]:
    properties = form["properties"]
    choices = [properties["workload"]["enum"]] if "workload" in properties else []
    if "workloads" in properties:
        (array,) = [option for option in properties["workloads"]["anyOf"] if option.get("type") == "array"]
        choices.append(array["items"]["enum"])
    return choices


def test_every_deployment_has_its_own_name():
    names = [deployment["name"] for deployment in DEPLOYMENTS]
    assert len(names) == len(set(names)), sorted(names)


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_every_form_parameter_is_described_none_is_internal_and_the_workload_is_a_choice(entrypoint, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(REPO / "flywheel.yaml"))
    form = _form(entrypoint)
    assert form["properties"], entrypoint
    assert not INTERNAL & set(form["properties"]), entrypoint
    for name, field in form["properties"].items():
        assert field.get("description", "").strip(), f"{entrypoint}: parameter {name!r} has no description"
    configured = sorted(yaml.safe_load((REPO / "flywheel.yaml").read_text())["workloads"])
    assert _workload_choices(form) and all(choice == configured for choice in _workload_choices(form)), entrypoint
    for deployment in DEPLOYMENTS:
        if deployment["entrypoint"] == entrypoint:  # the fixed values a deployment sets are form fields
            assert set(deployment.get("parameters", {})) <= set(form["properties"]), deployment["name"]


def test_the_workload_choices_are_the_configured_workloads(tmp_path, monkeypatch):
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data["workloads"] = {"restaurant-slots": data["workloads"]["restaurant-slots"]}
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(config))
    assert _workload_choices(_form("slm_flywheel.flows.entrypoints.promote")) == [["restaurant-slots"]]


def test_a_deployed_flow_keeps_the_name_of_the_flow_it_runs():
    from prefect.flows import load_flow_from_entrypoint

    from slm_flywheel.flows.drift_check import drift_check
    from slm_flywheel.flows.nightly_retrain import nightly_retrain
    from slm_flywheel.flows.promote import promote
    from slm_flywheel.flows.rollback_guard import rollback_guard
    from slm_flywheel.flows.sync_serving import sync_serving
    from slm_flywheel.flows.train_adapter import train_adapter_flow

    internal = {flow.name for flow in (drift_check, nightly_retrain, promote, rollback_guard, sync_serving, train_adapter_flow)}
    assert {load_flow_from_entrypoint(entrypoint).name for entrypoint in ENTRYPOINTS} == internal


def test_deploy_selects_the_deployments_of_configured_workloads_and_names_the_rest():
    from slm_flywheel.deployments.deploy import select_deployments

    prefect_file = REPO / "prefect.yaml"
    everything, none_skipped = select_deployments(prefect_file, ["banking-intent", "restaurant-slots"])
    assert none_skipped == {} and {"banking-intent", "restaurant-slots", "manual", "sync-serving"} <= set(everything)
    chosen, skipped = select_deployments(prefect_file, ["banking-intent"])
    assert skipped == {"restaurant-slots": "restaurant-slots", "restaurant-slots-hourly": "restaurant-slots"}
    assert set(chosen) == set(everything) - set(skipped)


def test_the_profile_choices_are_default_and_the_configured_training_profiles(tmp_path, monkeypatch):
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data["workloads"]["restaurant-slots"]["training_profiles"] = {"full": {"epochs": 2}, "tiny": {"max_examples": 64}}
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(config))
    profile = _form("slm_flywheel.flows.entrypoints.train_adapter")["properties"]["profile"]
    assert profile["enum"] == ["default", "full", "tiny"] and profile["default"] == "default"
