"""A property-based fuzz of the serving tier through its own OpenAPI schema (schemathesis): valid
and invalid bodies, path parameters and headers, admin token included; no answer may be a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from slm_flywheel.config import load_settings
from slm_flywheel.serving.app import create_app
from slm_flywheel.serving.server import build_state
from tests.conftest import REPO
from tests.faults.test_serving_faults import WORKLOAD, adapter_dir  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow
TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def serving_schema(tmp_path_factory, tiny_model_dir, data_dir, adapter_dir):
    home = tmp_path_factory.mktemp("fuzz")
    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(home), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    data["serving"] = {"admin_token": "s3cret", "adapter_roots": [str(adapter_dir.parent)]}
    (home / "flywheel.yaml").write_text(yaml.safe_dump(data))
    state = build_state(load_settings(home / "flywheel.yaml"), "replica-fuzz", load_champions=False, bf16=False)
    state.engine.load_adapter(f"{WORKLOAD}@v1", adapter_dir).result()  # so predictions run the model
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(state))
    state.engine.close()
    state.writer.close()


def _can_be_invalid(operation) -> bool:
    """A body, or a path parameter constrained beyond "a string" (any string is a valid segment)."""
    unconstrained = {"type", "title", "description"}
    return bool(len(operation.body)) or any(
        set(parameter.definition.get("schema", {})) - unconstrained or parameter.definition.get("schema", {}).get("type") != "string"
        for parameter in operation.path_parameters
    )


def test_every_operation_with_a_body_is_fuzzed_with_invalid_input(serving_schema):
    bodies = [result.ok() for result in serving_schema.get_all_operations() if len(result.ok().body)]
    assert bodies and all(_can_be_invalid(operation) for operation in bodies)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_request_gets_a_server_error(serving_schema, mode):
    # Bounded: 150 cases per operation and mode. A workload path is either generated or the served
    # workload's, so generated bodies reach the model too.
    for result in serving_schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not _can_be_invalid(operation):
            continue  # it declares no input that could be made invalid
        strategy = operation.as_strategy(mode)
        if "{workload}" in operation.path:
            strategy = strategy | operation.as_strategy(mode, path_parameters={"workload": WORKLOAD})

        @given(case=strategy)
        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(headers=TOKEN, checks=[not_a_server_error])

        fuzz()
