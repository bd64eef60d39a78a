"""The embedded serving tier: vLLM's dynamic-LoRA API, OpenAI chat completions, workload
predictions with capture, health and Prometheus metrics.

Endpoints
  POST /v1/load_lora_adapter    {"lora_name", "lora_path"}   (vLLM; path or models:/ reference)
  POST /v1/unload_lora_adapter  {"lora_name"}                (vLLM)
  GET  /v1/models, GET /v1/models/{id}                        (vLLM / OpenAI)
  POST /v1/chat/completions     {"model": adapter or workload, "messages": [...]}  (OpenAI:
                                 streaming, usage, logprobs, max_tokens; see serving/openai_api.py)
  POST /v1/completions          {"model", "prompt": text or [texts]}  (OpenAI legacy / vLLM)
  POST /v1/workloads/{workload}/predict  {"inputs": [...]}
  POST /v1/workloads/{workload}/route    {"lora_name"}        (switch the served version)
  GET  /v1/workloads                                          (workload -> served adapter)
  GET  /health, GET /metrics
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_flywheel.config import ServingConfig
from slm_flywheel.serving import openai_api
from slm_flywheel.serving.capture import Sample, SampleWriter, answer_to_text, now_utc
from slm_flywheel.serving.engine import AdapterEngine, EngineError, ServedPrediction, workload_of
from slm_flywheel.serving.openai_api import ApiError
from slm_flywheel.models.calibration import Calibration
from slm_flywheel.models.router_stats import FRONTIER, SLM
from slm_flywheel.serving.router import Routed, Router

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_JSON_DEPTH = 64  # far beyond any request this API takes; deeper is refused before it reaches a handler
MAX_CLIENT_ID_CHARS = 200  # the client's x-request-id is captured as given, so it is bounded


def _json_request(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An OpenAPI request body for the schema (handlers parse bodies themselves, to answer a bad
    one with an error that names the problem)."""
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_LORA_NAME = {"type": "string", "description": "<workload>@v<N>"}


@dataclass
class ServerState:
    engine: AdapterEngine
    writer: SampleWriter
    replica_id: str
    adapter_roots: list[Path]
    admin_token: str | None = None
    limits: ServingConfig = field(default_factory=ServingConfig)  # max_body_bytes, max_inputs_per_request, max_text_chars
    resolve_reference: Callable[[str], Path] | None = None  # models:/name@alias -> local adapter dir
    routers: dict[str, Router] = field(default_factory=dict)  # workload -> its router (serving/router.py)
    started: float = field(default_factory=time.time)


class Metrics:
    """Prometheus counters and a latency histogram, in a registry of the app's own."""

    def __init__(self, writer: SampleWriter):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("flywheel_requests", "Prediction requests", ["workload", "adapter"], registry=self.registry)
        self.predictions = Counter("flywheel_predictions", "Predicted inputs", ["workload", "adapter"], registry=self.registry)
        self.errors = Counter("flywheel_errors", "Requests answered with an error", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "flywheel_request_latency_seconds", "Prediction request latency", ["workload", "adapter"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        drops = Gauge("flywheel_capture_dropped", "Samples dropped because the capture queue was full", registry=self.registry)
        drops.set_function(lambda: writer.dropped)
        written = Gauge("flywheel_capture_written", "Samples written to the sample store", registry=self.registry)
        written.set_function(lambda: writer.written)
        failures = Gauge("flywheel_capture_write_failures", "Failed sample-store write attempts (each retry counts)", registry=self.registry)
        failures.set_function(lambda: writer.write_failures)
        spilled = Gauge("flywheel_capture_spilled", "Samples spilled to the local fallback file after the store failed", registry=self.registry)
        spilled.set_function(lambda: writer.spilled)
        recovered = Gauge("flywheel_capture_recovered", "Spilled samples since moved into the sample store", registry=self.registry)
        recovered.set_function(lambda: writer.recovered)
        self.routed = Counter("flywheel_routed", "Answered inputs by who answered them", ["workload", "served_by"], registry=self.registry)
        self.frontier_latency = Histogram(
            "flywheel_frontier_latency_seconds", "Frontier calls on the request path", ["workload"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        retained = Gauge("flywheel_capture_retained", "Samples held in memory because the store and the spill both failed", registry=self.registry)
        retained.set_function(lambda: writer.stats().retained)

    def watch_routers(self, routers: dict[str, Router]) -> None:
        """The routers' spend today and breaker state, read when /metrics is scraped."""
        from prometheus_client import Gauge

        spend = Gauge("flywheel_frontier_spend_today_usd", "Router spend on the frontier today (UTC)", ["workload"], registry=self.registry)
        breaker = Gauge("flywheel_frontier_breaker_open", "1 while the frontier circuit breaker is open or half open", ["workload"], registry=self.registry)
        share = Gauge("flywheel_frontier_share", "Share of answered inputs the frontier answered (since start)", ["workload"], registry=self.registry)
        label_free = Gauge(
            "flywheel_router_label_free_accuracy", "Mean calibrated confidence of the small model's served answers: its live accuracy, estimated without labels",
            ["workload"], registry=self.registry,
        )
        audited = Gauge("flywheel_router_audited", "Small-model answers also asked of the frontier (audits returned)", ["workload"], registry=self.registry)
        wrong = Gauge(
            "flywheel_router_wrong_path_rate", "Audited small-model answers the frontier disagreed with, with the 95% Wilson interval",
            ["workload", "bound"], registry=self.registry,
        )
        threshold = Gauge(
            "flywheel_router_threshold", "Calibrated confidence under which inputs go to the frontier: the version's, or raised by live labels",
            ["workload"], registry=self.registry,
        )
        nan = float("nan")
        for workload, router in routers.items():
            threshold.labels(workload).set_function(lambda router=router: _or_nan(router.stats.threshold))
            spend.labels(workload).set_function(lambda router=router: router.spend.spent_usd)
            breaker.labels(workload).set_function(lambda router=router: float(router.breaker.state != "closed"))
            share.labels(workload).set_function(lambda router=router: _or_nan(router.stats.frontier_share))
            label_free.labels(workload).set_function(lambda router=router: _or_nan(router.stats.label_free_accuracy))
            audited.labels(workload).set_function(lambda router=router: router.stats.audited)
            for index, bound in enumerate(("estimate", "low", "high")):
                wrong.labels(workload, bound).set_function(lambda router=router, index=index: (router.stats.wrong_path() or (nan, nan, nan))[index])

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


async def _json_body(request: Request, limits: ServingConfig) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limits.max_body_bytes}")
    raw = await request.body()
    if len(raw) > limits.max_body_bytes:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {limits.max_body_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise ApiError(400, f"request body is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    _check_json(body)
    return body


def _check_json(body: Any) -> None:
    """Refuse what JSON can carry but no handler should see: nesting deeper than MAX_JSON_DEPTH,
    and strings with lone surrogates ("\\ud800" is valid JSON but not Unicode text: the tokenizer,
    Parquet and the filesystem all fail on it)."""
    stack: list[tuple[Any, str, int]] = [(body, "body", 1)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"request body is nested too deeply at {where} (the limit is {MAX_JSON_DEPTH} levels)")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"a key of {where}")
                stack.append((item, f"{where}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"{where} holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}; text must be valid Unicode") from exc


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    if name not in body:
        raise ApiError(400, f"missing field {name!r}")
    if not isinstance(body[name], kind):
        raise ApiError(400, f"field {name!r} must be a {kind.__name__}")
    return body[name]


def _check_texts(texts: list[Any], limits: ServingConfig) -> list[str]:
    if not texts:
        raise ApiError(400, "'inputs' is empty")
    if len(texts) > limits.max_inputs_per_request:
        raise ApiError(413, f"{len(texts)} inputs in one request; the limit is {limits.max_inputs_per_request}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, f"inputs[{index}] must be a string")
        if not text.strip():
            raise ApiError(400, f"inputs[{index}] is empty")
        if len(text) > limits.max_text_chars:
            raise ApiError(413, f"inputs[{index}] is {len(text)} characters; the limit is {limits.max_text_chars}")
    return texts


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app over an engine and a sample writer (both owned by the caller)."""
    app = FastAPI(title="slm-flywheel serving", version="1")
    metrics = Metrics(state.writer)
    metrics.watch_routers(state.routers)
    app.state.flywheel = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.errors.labels(request.url.path, str(exc.status)).inc()
        return JSONResponse(openai_api.error_body(exc), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods too answer in OpenAI's error shape (clients parse it).
        return await _api_error(request, ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    def _require_admin(request: Request) -> None:
        if state.admin_token is None:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
        # Constant-time, on bytes (compare_digest refuses non-ASCII str; a header is Latin-1).
        given = header.removeprefix("Bearer ").strip().encode("latin-1")
        if not hmac.compare_digest(given, state.admin_token.encode("utf-8")):
            raise ApiError(403, "wrong bearer token")

    def _inside_roots(path: Path) -> bool:
        return any(path.is_relative_to(root.resolve()) for root in state.adapter_roots)

    def _confined(path_text: str) -> Path:
        """The adapter folder, resolved, if it and every file in it (symlinks followed) lie inside
        the adapter roots."""
        try:
            path = Path(path_text).expanduser().resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
            raise ApiError(400, f"adapter path {path_text!r} is not a usable path: {exc}") from exc
        if not _inside_roots(path):
            raise ApiError(403, f"adapter path {path_text!r} is outside the allowed adapter roots")
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                if item.is_symlink() and not _inside_roots(item.resolve()):
                    raise ApiError(403, f"{item} is a symlink to {item.resolve()}, outside the allowed adapter roots")
        return path

    async def _await(future: Any) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except EngineError as exc:
            raise ApiError(exc.status, str(exc)) from exc

    async def _served(workload: str, texts: list[str], adapter: str | None = None) -> list[ServedPrediction]:
        try:
            future = state.engine.predict(workload, texts, adapter)
        except EngineError as exc:
            raise ApiError(exc.status, str(exc)) from exc
        return await _await(future)

    def _client_request_id(request: Request) -> str | None:
        client_id = request.headers.get("x-request-id")
        if client_id is not None and len(client_id) > MAX_CLIENT_ID_CHARS:
            raise ApiError(400, f"x-request-id is {len(client_id)} characters; the limit is {MAX_CLIENT_ID_CHARS}")
        return client_id

    async def _routed(workload: str, texts: list[str], served: list[ServedPrediction], ids: list[str]) -> list[Routed] | None:
        """The router's answers for a routed request (None: the workload has no router)."""
        router = state.routers.get(workload)
        if router is None:
            return None
        calibration = _calibration(router, served)
        routed = await router.route(texts, [(item.prediction.answer, item.prediction.valid, item.prediction.confidence) for item in served], calibration, ids)
        for item in routed:
            metrics.routed.labels(workload, item.served_by).inc()
        if (asked := next((item.frontier_latency_ms for item in routed if item.frontier_latency_ms is not None), None)) is not None:
            metrics.frontier_latency.labels(workload).observe(asked / 1000)
        return routed

    def _calibration(router: Router, served: list[ServedPrediction]) -> Calibration | None:
        """The calibration of the version that answered (read once per adapter folder)."""
        adapters, _ = state.engine.snapshot()
        path = adapters.get(served[0].adapter)
        try:
            return router.calibration(Path(path) if path is not None else None)
        except ValueError:  # an unreadable calibration.json routes nothing, and says so in every row
            return None

    def _frontier_name(workload: str) -> str | None:
        """The frontier model a workload's router asks (SIMULATED in the demo and offline)."""
        router = state.routers.get(workload)
        return router.frontier.name if router is not None and router.frontier is not None else None

    def _input_ids(request_id: str, client_id: str | None, count: int) -> list[str]:
        """What the frontier knows each input by: the caller's id (with the input's index when a
        request has several), else ours."""
        base = client_id or request_id
        return [base] if count == 1 else [f"{base}:{index}" for index in range(count)]

    def _record(
        workload: str,
        request_id: str,
        client_id: str | None,
        texts: list[str],
        served: list[ServedPrediction],
        started: float,
        routed: list[Routed] | None = None,
        background: BackgroundTasks | None = None,
        ids: list[str] | None = None,
    ) -> float:
        """Capture every answer of one request and count it in the metrics; returns its latency (ms).

        With inputs to audit, the capture waits for the frontier's audit answers, after the
        response has gone (a background task): the caller never waits for an audit."""
        latency_ms = (time.perf_counter() - started) * 1000
        router = state.routers.get(workload)
        audited = router.audited(ids, routed) if router is not None and routed is not None and ids is not None and background is not None else []
        if audited:
            async def audit_then_capture() -> None:
                answers = await router.audit([texts[i] for i in audited], [ids[i] for i in audited])
                router.record_audit(
                    [routed[i].slm_answer for i in audited], answers, _calibration(router, served), [routed[i].calibrated_confidence for i in audited],
                )
                audits: list[Any] = [None] * len(texts)
                for index, answer in zip(audited, answers):
                    audits[index] = answer
                _capture(workload, request_id, client_id, texts, served, latency_ms, routed, audits)

            background.add_task(audit_then_capture)
        else:
            _capture(workload, request_id, client_id, texts, served, latency_ms, routed)
        adapter = served[0].adapter
        metrics.requests.labels(workload, adapter).inc()
        metrics.predictions.labels(workload, adapter).inc(len(texts))
        metrics.latency.labels(workload, adapter).observe(latency_ms / 1000)
        return latency_ms

    def _capture(
        workload: str,
        request_id: str,
        client_id: str | None,
        texts: list[str],
        served: list[ServedPrediction],
        latency_ms: float,
        routed: list[Routed] | None,
        audits: list[Any] | None = None,
    ) -> None:
        stamp = now_utc()
        for index, (text, item) in enumerate(zip(texts, served)):
            route = routed[index] if routed is not None else None
            state.writer.append(
                Sample(
                    timestamp=stamp,
                    request_id=f"{request_id}:{index}" if len(texts) > 1 else request_id,
                    workload=workload,
                    input=text,
                    answer=answer_to_text(item.prediction.answer),
                    valid=item.prediction.valid,
                    confidence=float(item.prediction.confidence),
                    adapter_version=item.adapter,
                    latency_ms=latency_ms,
                    replica_id=state.replica_id,
                    client_request_id=client_id,
                    served_by=route.served_by if route else SLM,
                    served_answer=answer_to_text(route.answer) if route else answer_to_text(item.prediction.answer),
                    route_reason=route.reason if route else None,
                    calibrated_confidence=route.calibrated_confidence if route else None,
                    frontier_latency_ms=route.frontier_latency_ms if route else None,
                    frontier_tokens=route.frontier_tokens if route and route.served_by != SLM else None,
                    frontier_cost_usd=route.frontier_cost_usd if route else None,
                    audit_answer=answer_to_text(audits[index]) if audits and audits[index] is not None else None,
                )
            )

    @app.post("/v1/load_lora_adapter", openapi_extra=_json_request({"lora_name": _LORA_NAME, "lora_path": {"type": "string"}}, ["lora_name", "lora_path"]))
    async def load_lora_adapter(request: Request) -> PlainTextResponse:
        _require_admin(request)
        body = await _json_body(request, state.limits)
        name = _field(body, "lora_name", str)
        source = _field(body, "lora_path", str)
        if source.startswith("models:/"):
            if state.resolve_reference is None:
                raise ApiError(400, "this server has no registry configured to resolve models:/ references")
            try:
                path = state.resolve_reference(source)
            except LookupError as exc:
                raise ApiError(404, str(exc)) from exc
        else:
            path = _confined(source)
        await _await(state.engine.load_adapter(name, path))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", openapi_extra=_json_request({"lora_name": _LORA_NAME}, ["lora_name"]))
    async def unload_lora_adapter(request: Request) -> PlainTextResponse:
        _require_admin(request)
        body = await _json_body(request, state.limits)
        name = _field(body, "lora_name", str)
        await _await(state.engine.unload_adapter(name))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/workloads/{workload}/route", openapi_extra=_json_request({"lora_name": _LORA_NAME, "unload_previous": {"type": "boolean"}}, ["lora_name"]))
    async def route(workload: str, request: Request) -> dict[str, Any]:
        _require_admin(request)
        body = await _json_body(request, state.limits)
        name = _field(body, "lora_name", str)
        unload = body.get("unload_previous", True)
        if not isinstance(unload, bool):  # bool("false") is True: a string would unload the old adapter
            raise ApiError(400, "field 'unload_previous' must be a JSON boolean (true or false)")
        previous = await _await(state.engine.switch(workload, name, unload))
        return {"workload": workload, "adapter": name, "previous": previous}

    @app.get("/v1/workloads")
    async def workloads() -> dict[str, Any]:
        _, routes = state.engine.snapshot()
        return {"workloads": {name: routes.get(name) for name in sorted(state.engine.specs)}}

    def _model_cards() -> dict[str, dict[str, Any]]:
        """Base, loaded adapters, and each routed workload (a name chat completions accept)."""
        adapters, routes = state.engine.snapshot()
        created, base = int(state.started), state.engine.base_path
        cards = {base: openai_api.model_card(base, created, base, None)}
        cards.update({name: openai_api.model_card(name, created, path, base) for name, path in sorted(adapters.items())})
        cards.update({workload: openai_api.model_card(workload, created, adapters[name], base) for workload, name in sorted(routes.items()) if name in adapters})
        return cards

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": list(_model_cards().values())}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        card = _model_cards().get(model_id)
        if card is None:
            raise ApiError(404, f"The model {model_id!r} does not exist (see GET /v1/models)", "model", "model_not_found")
        return card

    @app.post("/v1/workloads/{workload}/predict", openapi_extra=_json_request({"inputs": {"type": "array", "items": {"type": "string"}, "minItems": 1}}, ["inputs"]))
    async def predict(workload: str, request: Request, background: BackgroundTasks) -> dict[str, Any]:
        started = time.perf_counter()
        body = await _json_body(request, state.limits)
        texts = _check_texts(_field(body, "inputs", list), state.limits)
        client_id = _client_request_id(request)
        request_id = str(uuid.uuid4())  # ours, so unique; a client's id may repeat
        served = await _served(workload, texts)
        ids = _input_ids(request_id, client_id, len(texts))
        routed = await _routed(workload, texts, served, ids)
        latency_ms = _record(workload, request_id, client_id, texts, served, started, routed, background, ids)
        routes = routed or [None] * len(served)
        return {
            "request_id": request_id,
            "client_request_id": client_id,
            "workload": workload,
            # The frontier model the router would ask (SIMULATED in the demo and offline).
            "frontier": _frontier_name(workload),
            "predictions": [
                {
                    # What the caller gets (the frontier's answer where it answered) ...
                    "answer": route.answer if route else item.prediction.answer,
                    "valid": route.valid if route else item.prediction.valid,
                    "served_by": route.served_by if route else SLM,
                    # ... and the small model's own answer, its confidence and how sure it really is.
                    "slm_answer": item.prediction.answer,
                    "confidence": item.prediction.confidence,
                    "calibrated_confidence": route.calibrated_confidence if route else None,
                    "route_reason": route.reason if route else None,
                    "version": item.adapter,
                    "latency_ms": latency_ms,
                }
                for item, route in zip(served, routes)
            ],
        }

    def _as_served(item: ServedPrediction, route: Routed | None) -> ServedPrediction:
        """What the caller gets: a frontier answer replaces the small model's, its tokens counted
        by the base tokenizer (usage) and no log-probabilities (a request asking for them is
        never routed)."""
        if route is None or route.served_by != FRONTIER:
            return item
        tokens = tuple(state.engine.tokenizer.encode(" " + (answer_to_text(route.answer) or ""), add_special_tokens=False))
        return ServedPrediction(replace(item.prediction, answer=route.answer, valid=True, tokens=tokens, token_logprobs=()), item.adapter)

    async def _complete(
        request: Request, model: str, texts: list[str], id_prefix: str, started: float, background: BackgroundTasks, route: bool
    ) -> tuple[str, list[ServedPrediction], list[Routed] | None]:
        """Answer OpenAI-protocol inputs with `model` (an adapter or a workload), captured; a workload
        with a router is routed when `route` (a request asking for log-probabilities is not: they
        are the small model's)."""
        adapters, routes = state.engine.snapshot()
        if model not in adapters and model not in routes:
            raise ApiError(404, f"The model {model!r} does not exist (see GET /v1/models)", "model", "model_not_found")
        workload = workload_of(model)
        texts = _check_texts(texts, state.limits)
        client_id = _client_request_id(request)
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"  # made here, unique; the client's id is captured beside it
        # As in vLLM, naming an adapter answers with that adapter, routed or not (a push's smoke
        # test); naming the workload answers with whatever it is routed to.
        served = await _served(workload, texts, model if model in adapters else None)
        ids = _input_ids(request_id, client_id, len(texts))
        routed = await _routed(workload, texts, served, ids) if route and model not in adapters else None
        _record(workload, request_id, client_id, texts, served, started, routed, background, ids)
        return request_id, [_as_served(item, r) for item, r in zip(served, routed or [None] * len(served))], routed

    def _route_body(item: ServedPrediction, routed: list[Routed] | None) -> dict[str, Any]:
        """The `flywheel` extension of an OpenAI response: who answered and how sure the small model was."""
        route = routed[0] if routed else None
        body = {"confidence": item.prediction.confidence, "valid": item.prediction.valid, "served_by": route.served_by if route else SLM}
        if route is not None:
            body.update(slm_answer=route.slm_answer, calibrated_confidence=route.calibrated_confidence, route_reason=route.reason)
            body["frontier"] = _frontier_name(workload_of(item.adapter))
        return body

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request, background: BackgroundTasks) -> dict[str, Any] | StreamingResponse:
        started = time.perf_counter()
        chat = openai_api.parse_chat_request(await _json_body(request, state.limits))
        request_id, served, routed = await _complete(request, chat.model, [openai_api.last_user_text(chat.messages)], "chatcmpl", started, background, not chat.logprobs)
        item = served[0]
        answer = openai_api.reply_to(item.prediction, state.engine.tokenizer.decode, chat.limit)
        if chat.stream:
            chunks = openai_api.chat_chunks(request_id, item.adapter, chat, answer)
            return StreamingResponse(openai_api.sse(chunks), media_type="text/event-stream")
        body = openai_api.chat_completion(request_id, item.adapter, chat, answer)
        body["flywheel"] = _route_body(item, routed)
        return body

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request, background: BackgroundTasks) -> dict[str, Any] | StreamingResponse:
        started = time.perf_counter()
        call = openai_api.parse_completion_request(await _json_body(request, state.limits))
        request_id, served, _ = await _complete(request, call.model, call.prompts, "cmpl", started, background, call.logprobs is None)
        answers = [openai_api.reply_to(item.prediction, state.engine.tokenizer.decode, call.max_tokens) for item in served]
        if call.stream:
            chunks = openai_api.completion_chunks(request_id, served[0].adapter, call, answers)
            return StreamingResponse(openai_api.sse(chunks), media_type="text/event-stream")
        return openai_api.completion(request_id, served[0].adapter, call, answers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        adapters, routes = state.engine.snapshot()
        capture = state.writer.stats()
        # Still 200 when capture is failing: predictions are answered; the rows wait in the spill.
        return {
            "status": "ok" if capture.healthy else "degraded",
            "replica_id": state.replica_id,
            "base_model": state.engine.base_path,
            "adapters": sorted(adapters),
            "routes": routes,
            "capture": {**asdict(capture), "healthy": capture.healthy},
        }

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render().decode(), media_type="text/plain; version=0.0.4")

    return app
