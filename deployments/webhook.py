"""The endpoint MLflow's registry webhooks call: a new `champion` alias starts `sync-serving`.

MLflow signs each delivery (HMAC-SHA256 over `<delivery id>.<timestamp>.<body>`, header
`X-MLflow-Signature: v1,<base64>`). The headers are checked before any of the body is read: a
missing, non-ASCII or malformed signature, timestamp or delivery id, or a delivery older than
`max_age_s` (a replay), is refused with 401 and a reason; a body declared or streamed past
`max_body_bytes` gets 413 without being read further. Then the signature over the body (401), then
the event's shape (400: not JSON, not an object, `data` not an object). A good
`model_version_alias.created` for the `champion` alias of a configured workload creates a flow run
of the `sync-serving` deployment (idempotent per delivery id, so MLflow's retries start it once).
Everything else is acknowledged and ignored.

`serve_webhook` refuses to start without a Prefect API it can reach (an ephemeral one would be
gone with the process, and every delivery would fail), and exits cleanly on SIGTERM or SIGINT.

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

from slm_flywheel.config import Settings
from slm_flywheel.models.registry import CHAMPION

EVENT = "model_version_alias.created"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"

StartRun = Callable[[str, dict[str, Any], str], str]  # (deployment, parameters, idempotency key) -> flow run id


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature of one delivery (what its server sends in `X-MLflow-Signature`)."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_headers(headers: Any, max_age_s: float, now: float | None = None) -> str | None:
    """None when the signature headers are present, well-formed and fresh, else why not (what can
    be checked before reading the body)."""
    values = {name: headers.get(name) for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER)}
    if not all(values.values()):
        return f"missing {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} or {DELIVERY_HEADER} header"
    for name, value in values.items():
        if not (value.isascii() and value.isprintable()):
            return f"{name} is not printable ASCII"
    timestamp = values[TIMESTAMP_HEADER]
    if not timestamp.isdigit():
        return f"{TIMESTAMP_HEADER} is not a unix timestamp"
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > max_age_s:
        return f"delivery timestamp is {age:.0f} s away from now (allowed {max_age_s:.0f} s): replayed or clock skew"
    return None


def verify(secret: str, headers: Any, body: bytes, max_age_s: float, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh, else why not."""
    problem = check_headers(headers, max_age_s, now)
    if problem:
        return problem
    signature, timestamp, delivery_id = (headers[h] for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER))
    if not hmac.compare_digest(signature.encode(), sign(secret, delivery_id, timestamp, body).encode()):
        return "signature does not match (wrong secret, or the body was altered)"
    return None


class BodyTooLarge(Exception):
    """The body is over the limit (declared or streamed); nothing past the limit was read."""


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, read only while it stays within `limit` bytes.

    Raises:
        BodyTooLarge: `Content-Length` or the streamed body exceeds `limit`.
        ValueError: `Content-Length` is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ValueError("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
    return bytes(body)


def parse_event(body: bytes) -> tuple[str, dict[str, Any]]:
    """(`<entity>.<action>`, data) of an MLflow webhook event.

    Raises:
        ValueError: the body is not such an event (the message says what is wrong).
    """
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested past the parser's depth
        raise ValueError("body is not JSON") from None
    if not isinstance(event, dict):
        raise ValueError("body is not a JSON object")
    entity, action, data = event.get("entity"), event.get("action"), event.get("data")
    if not (isinstance(entity, str) and isinstance(action, str)):
        raise ValueError("body is not an MLflow webhook event (entity and action must be strings)")
    if not isinstance(data, dict):
        raise ValueError("body is not an MLflow webhook event (data must be an object)")
    return f"{entity}.{action}", data


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

    def refuse(status: int, kind: str, message: str) -> JSONResponse:
        # Connection: close, since a refused body may be left unread on the connection.
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers={"Connection": "close"})

    @app.post("/mlflow/webhook")
    async def receive(request: Request) -> JSONResponse:
        problem = check_headers(request.headers, settings.webhook.max_age_s)
        if problem:
            return refuse(401, "unauthorized", problem)
        try:
            body = await read_capped(request, settings.webhook.max_body_bytes)
        except BodyTooLarge as exc:
            return refuse(413, "too_large", str(exc))
        except ValueError as exc:
            return refuse(400, "bad_request", str(exc))
        problem = verify(secret, request.headers, body, settings.webhook.max_age_s)
        if problem:
            return refuse(401, "unauthorized", problem)
        try:
            kind, data = parse_event(body)
        except ValueError as exc:
            return refuse(400, "bad_request", str(exc))
        alias, name = data.get("alias"), data.get("name")
        if kind != EVENT or alias != CHAMPION:
            return JSONResponse({"ignored": f"{kind} {alias if isinstance(alias, str) else ''}".strip() + f": only {EVENT} for alias {CHAMPION!r} starts a sync"})
        if not isinstance(name, str) or name not in settings.workloads:
            return JSONResponse({"ignored": f"registered model {name!r} is not a configured workload"})
        parameters = {"workloads": [name]}
        # Off the event loop: Prefect's run_deployment is sync there (and returns a coroutine here).
        run_id = await run_in_threadpool(start_run, settings.webhook.deployment, parameters, request.headers[DELIVERY_HEADER])
        return JSONResponse({"started": settings.webhook.deployment, "flow_run_id": run_id, "parameters": parameters}, status_code=202)

    return app


def require_prefect_api(timeout_s: float = 10.0) -> str:
    """The URL of the Prefect API the flow runs go to, once it answers its health check.

    Raises:
        ValueError: PREFECT_API_URL is not set, or the API there does not answer (one line each).
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ValueError(
            "PREFECT_API_URL is not set: the webhook starts flow runs on a Prefect server that stays up; start one "
            "(`prefect server start`) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    with get_client(sync_client=True, httpx_settings={"timeout": timeout_s}) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise ValueError(f"the Prefect API at PREFECT_API_URL={url} is not reachable ({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else 'no answer'})")
    return url


def serve_webhook(settings: Settings, host: str, port: int) -> None:
    """Run the endpoint until SIGTERM or SIGINT, then return (so the process exits cleanly).

    Raises:
        ValueError: no webhook secret, or no reachable Prefect API (see `require_prefect_api`).
    """
    import signal

    import uvicorn

    app = create_webhook_app(settings)
    require_prefect_api()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
    # uvicorn shuts down gracefully on these signals and then raises them again: with the default
    # handlers that kills the process before anything after `run` (exit 143 on SIGTERM). With
    # these, the re-raised signal is a no-op and `run` returns.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register_webhook(client: Any, url: str, secret: str, name: str = "slm-flywheel-sync-serving") -> Any:
    """Create (or replace) the MLflow webhook that calls `url` on every new alias."""
    for existing in client.list_webhooks():
        if existing.name == name:
            client.delete_webhook(existing.webhook_id)
    return client.create_webhook(name=name, url=url, events=[EVENT], secret=secret, description="slm-flywheel: a new champion alias starts sync-serving")
