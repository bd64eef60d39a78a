"""The webhook endpoint's checks: MLflow's HMAC scheme, replay window, and which events start a sync.
(The loopback MLflow server → webhook → Prefect chain is in tests/integration/test_deployments.py.)"""

import json
import time

import pytest
from fastapi.testclient import TestClient

from slm_flywheel.deployments.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, create_webhook_app, sign, verify
from slm_flywheel.config import load_settings
from tests.conftest import REPO


def test_signature_matches_mlflows_own_scheme():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = '{"entity": "model_version_alias", "action": "created"}'
    assert sign("s", "id-1", "1700000000", body.encode()) == _generate_hmac_signature("s", "id-1", "1700000000", body)


@pytest.mark.parametrize(
    "headers, problem",
    [
        ({}, "missing"),
        ({SIGNATURE_HEADER: "v1,AAAA", TIMESTAMP_HEADER: "100", DELIVERY_HEADER: "d"}, "signature does not match"),
        ({SIGNATURE_HEADER: "v1,AAAA", TIMESTAMP_HEADER: "soon", DELIVERY_HEADER: "d"}, "not a unix timestamp"),
        ({SIGNATURE_HEADER: sign("k", "d", "0", b"{}"), TIMESTAMP_HEADER: "0", DELIVERY_HEADER: "d"}, "replayed"),
    ],
)
def test_verify_names_what_is_wrong(headers, problem):
    assert problem in verify("k", headers, b"{}", max_age_s=300, now=100 if problem != "replayed" else 10_000)


def test_verify_accepts_a_fresh_authentic_delivery():
    assert verify("k", {SIGNATURE_HEADER: sign("k", "d", "100", b"{}"), TIMESTAMP_HEADER: "100", DELIVERY_HEADER: "d"}, b"{}", 300, now=150) is None


def _post(client, event, secret="k", delivery="d-1"):
    body = json.dumps(event).encode()
    now = str(int(time.time()))
    return client.post("/mlflow/webhook", content=body, headers={SIGNATURE_HEADER: sign(secret, delivery, now, body), TIMESTAMP_HEADER: now, DELIVERY_HEADER: delivery})


def test_only_a_new_champion_of_a_configured_workload_starts_the_deployment():
    started = []
    settings = load_settings(REPO / "flywheel.yaml", webhook={"secret": "k"})
    client = TestClient(create_webhook_app(settings, start_run=lambda name, params, key: started.append((name, params, key)) or "run-1"))
    alias = {"entity": "model_version_alias", "action": "created"}
    assert _post(client, {**alias, "data": {"name": "banking-intent", "alias": "previous-champion", "version": "1"}}).json()["ignored"]
    assert "not a configured workload" in _post(client, {**alias, "data": {"name": "other", "alias": "champion", "version": "1"}}).json()["ignored"]
    assert _post(client, {"entity": "model_version", "action": "created", "data": {"name": "banking-intent"}}).json()["ignored"]
    assert _post(client, {"no": "event"}).status_code == 400
    assert _post(client, {**alias, "data": {"name": "banking-intent", "alias": "champion", "version": "3"}}, secret="forged").status_code == 401
    assert started == []
    response = _post(client, {**alias, "data": {"name": "banking-intent", "alias": "champion", "version": "3"}}, delivery="d-9")
    assert response.status_code == 202 and response.json()["flow_run_id"] == "run-1"
    assert started == [("sync-serving/sync-serving", {"workloads": ["banking-intent"]}, "d-9")]  # idempotent per delivery


def test_the_endpoint_refuses_to_start_without_a_secret():
    with pytest.raises(ValueError, match="FLYWHEEL_WEBHOOK__SECRET"):
        create_webhook_app(load_settings(REPO / "flywheel.yaml"))


def test_malformed_headers_and_bodies_get_4xx_never_5xx_and_start_nothing():
    started = []
    settings = load_settings(REPO / "flywheel.yaml", webhook={"secret": "k", "max_body_bytes": 8192})
    client = TestClient(create_webhook_app(settings, start_run=lambda *args: started.append(args) or "run-1"))
    now = str(int(time.time()))

    def post(body, **headers):
        signed = {SIGNATURE_HEADER: sign("k", "d", now, body), TIMESTAMP_HEADER: now, DELIVERY_HEADER: "d"}
        return client.post("/mlflow/webhook", content=body, headers={**signed, **headers}).status_code

    assert post(b"{}", **{SIGNATURE_HEADER: "v1,\u00e9".encode()}) == 401  # was a 500
    assert post(b"{}", **{TIMESTAMP_HEADER: "\u0661\u0662".encode()}) == 401  # non-ASCII digits
    assert post(b"x" * 10_000) == 413
    assert post(json.dumps({"entity": "model_version_alias", "action": "created", "data": "champion"}).encode()) == 400  # was a 500
    assert post(b"[" * 3000 + b"]" * 3000) == 400  # nested past the parser's depth
    assert post(b"[]") == 400
    assert started == []
