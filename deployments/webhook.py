"""The endpoint MLflow's registry webhooks call: a new `champion` alias starts `sync-serving`.

MLflow signs each delivery (HMAC-SHA256 over `<delivery id>.<timestamp>.<body>`, header
`X-MLflow-Signature: v1,<base64>`). A delivery with a missing or wrong signature, or one older than
`max_age_s` (a replay), is refused with 401 and a reason; a good `model_version_alias.created` for
the `champion` alias of a configured workload creates a flow run of the `sync-serving` deployment
(idempotent per delivery id, so MLflow's retries start it once). Everything else is acknowledged
and ignored.

    flywheel webhook serve                  # this endpoint (FLYWHEEL_WEBHOOK__SECRET holds the secret)
    flywheel webhook register --url URL     # tell MLflow to call it
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from flywheel.config import Settings
from models.registry import CHAMPION

EVENT = "model_version_alias.created"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"

StartRun = Callable[[str, dict[str, Any], str], str]  # (deployment, parameters, idempotency key) -> flow run id


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature of one delivery (what its server sends in `X-MLflow-Signature`)."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Any, body: bytes, max_age_s: float, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh, else why not."""
    signature, timestamp, delivery_id = (headers.get(h) for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER))
    if not (signature and timestamp and delivery_id):
        return f"missing {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} or {DELIVERY_HEADER} header"
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a unix timestamp"
    if abs(age) > max_age_s:
        return f"delivery timestamp is {age:.0f} s away from now (allowed {max_age_s:.0f} s): replayed or clock skew"
    if not hmac.compare_digest(signature, sign(secret, delivery_id, timestamp, body)):
        return "signature does not match (wrong secret, or the body was altered)"
    return None


def start_deployment_run(deployment: str, parameters: dict[str, Any], idempotency_key: str) -> str:
    """Create a flow run of `deployment` on the configured Prefect API (returns at once)."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False, idempotency_key=idempotency_key)
    return str(run.id)


def create_webhook_app(settings: Settings, start_run: StartRun = start_deployment_run) -> FastAPI:
    secret = settings.webhook.secret
    if not secret:
        raise ValueError("webhook.secret is not set: set FLYWHEEL_WEBHOOK__SECRET (the same secret given to MLflow)")
    app = FastAPI(title="slm-flywheel MLflow webhook")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/mlflow/webhook")
    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        problem = verify(secret, request.headers, body, settings.webhook.max_age_s)
        if problem:
            return JSONResponse({"error": {"message": problem, "type": "unauthorized"}}, status_code=401)
        try:
            event = json.loads(body)
            kind, data = f"{event['entity']}.{event['action']}", event["data"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": {"message": "body is not an MLflow webhook event (entity, action, data)", "type": "bad_request"}}, status_code=400)
        if kind != EVENT or data.get("alias") != CHAMPION:
            return JSONResponse({"ignored": f"{kind} {data.get('alias', '')}".strip() + f": only {EVENT} for alias {CHAMPION!r} starts a sync"})
        if data.get("name") not in settings.workloads:
            return JSONResponse({"ignored": f"registered model {data.get('name')!r} is not a configured workload"})
        parameters = {"workloads": [data["name"]]}
        # Off the event loop: Prefect's run_deployment is sync there (and returns a coroutine here).
        run_id = await run_in_threadpool(start_run, settings.webhook.deployment, parameters, request.headers[DELIVERY_HEADER])
        return JSONResponse({"started": settings.webhook.deployment, "flow_run_id": run_id, "parameters": parameters}, status_code=202)

    return app


def register_webhook(client: Any, url: str, secret: str, name: str = "slm-flywheel-sync-serving") -> Any:
    """Create (or replace) the MLflow webhook that calls `url` on every new alias."""
    for existing in client.list_webhooks():
        if existing.name == name:
            client.delete_webhook(existing.webhook_id)
    return client.create_webhook(name=name, url=url, events=[EVENT], secret=secret, description="slm-flywheel: a new champion alias starts sync-serving")
