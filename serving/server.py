"""Start the embedded serving tier for a configuration (`flywheel serve`)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm_flywheel.config import ConfigError, Settings
from slm_flywheel.serving.app import ServerState, create_app
from slm_flywheel.serving.capture import SampleWriter
from slm_flywheel.serving.engine import AdapterEngine
from slm_flywheel.serving.router import Router

if TYPE_CHECKING:
    from slm_flywheel.models.context import WorkloadContext

log = logging.getLogger("flywheel.serving")


def registry_resolver(settings: Settings) -> Any:
    """`models:/<workload>@<alias>` or `models:/<workload>/<N>` -> the adapter's local folder."""
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.registry import download_adapter, get_version, parse_model_ref

    def resolve(reference: str) -> Path:
        name, version, alias = parse_model_ref(reference)
        client = mlflow_client(settings)
        return download_adapter(client, get_version(client, name, version=version, alias=alias), settings.adapters_dir)

    return resolve


def build_state(settings: Settings, replica_id: str | None = None, *, load_champions: bool = True, bf16: bool | None = None) -> ServerState:
    """Load the base model, start capture and (optionally) load every workload's champion."""
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.context import resolve_workload

    serving = settings.serving
    base_path = resolve_base_model(settings.base_model, settings.models_dir)
    contexts = {name: resolve_workload(settings, name) for name in settings.workloads}
    specs = {name: context.spec for name, context in contexts.items()}
    engine = AdapterEngine(
        base_path, specs, max_batch=serving.max_batch, batch_wait_s=serving.batch_wait_ms / 1000, bf16=bf16, tree=serving.tree_decoding,
        merge_routed=serving.merge_routed,
    )
    replica = replica_id or f"{socket.gethostname()}-{serving.port}"
    writer = SampleWriter(
        settings.samples_dir,
        replica,
        max_queue=serving.capture_queue,
        flush_records=serving.capture_flush_records,
        flush_seconds=serving.capture_flush_seconds,
    )
    state = ServerState(
        engine=engine,
        writer=writer,
        replica_id=replica,
        adapter_roots=[settings.home.resolve(), *serving.adapter_roots],
        admin_token=serving.admin_token,
        limits=serving,
        resolve_reference=registry_resolver(settings),
        routers=build_routers(contexts),
    )
    if load_champions:
        load_registry_champions(settings, state)
    return state


def build_routers(contexts: dict[str, WorkloadContext]) -> dict[str, Router]:
    """A router per workload whose `router.mode` is not off; its frontier is the workload's
    teacher (key from `teacher.api_key_env`: the serving tier reads no Prefect Secret), with the
    daily cap as its budget, so one call can never spend past it."""
    from slm_flywheel.models.teacher.build import teacher_for

    routers = {}
    for name, context in contexts.items():
        config = context.config.router
        if config.mode == "off":
            continue
        frontier = teacher_for(context, None, budget_usd=config.daily_spend_usd, on_request_path=True)
        routers[name] = Router(context.spec, config, frontier)
        log.info("%s: router %s, frontier %s, audit share %.3f", name, config.mode, frontier.name, config.audit_share)
    return routers


def load_registry_champions(settings: Settings, state: ServerState) -> dict[str, str]:
    """Load each workload's `champion` (if it has one) as `<workload>@v<N>` and route to it."""
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.registry import CHAMPION, alias_version, download_adapter

    client = mlflow_client(settings)
    loaded = {}
    for workload in state.engine.specs:
        record = alias_version(client, workload, CHAMPION)
        if record is None:
            log.info("%s has no champion yet; not serving it", workload)
            continue
        name = f"{workload}@v{record.version}"
        path = download_adapter(client, record, settings.adapters_dir)
        state.engine.load_adapter(name, path).result()
        state.engine.switch(workload, name).result()
        loaded[workload] = name
        log.info("serving %s v%d (%s) from %s", workload, record.version, name, path)
    log.info("loaded adapters: %s", ", ".join(f"{workload} v{name.rsplit('@v', 1)[1]}" for workload, name in loaded.items()) or "none (no workload has a champion yet)")
    return loaded


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%", 1)[0]).is_loopback for address in addresses)


def check_admin_exposure(host: str, admin_token: str | None, allow_open_admin: bool = False) -> None:
    """Refuse to open the admin API (load, unload, route) beyond loopback without a token.

    Raises:
        ConfigError: `host` is not loopback, no `serving.admin_token` is set and the open admin
            API was not explicitly allowed.
    """
    if admin_token or is_loopback(host):
        return
    if not allow_open_admin:
        raise ConfigError(
            f"refusing to serve on {host}: without serving.admin_token (FLYWHEEL_SERVING__ADMIN_TOKEN) anyone who reaches "
            "this address can load, unload and route adapters; set a token, bind 127.0.0.1, or pass --allow-open-admin"
        )
    log.warning("serving on %s with an OPEN admin API (no serving.admin_token): anyone who reaches it can load, unload and route adapters", host)


@contextlib.contextmanager
def _return_after_signals() -> Iterator[None]:
    """Let `uvicorn.run` return after a SIGTERM or SIGINT instead of dying in it.

    uvicorn shuts down gracefully on either, then re-raises the signal to the handler installed
    before it: the default one kills the process (exit 143) before the caller can flush capture.
    With these handlers installed the re-raise is a no-op, so the caller's cleanup runs."""
    def handled(signum: int, frame: Any) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handled) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(settings: Settings, host: str | None = None, port: int | None = None, replica_id: str | None = None, allow_open_admin: bool = False) -> None:
    """Run the server until SIGTERM or SIGINT; then answer what is in flight, flush capture, return.

    Raises:
        ConfigError: the admin API would be open beyond loopback (see `check_admin_exposure`).
    """
    import uvicorn

    bind = host or settings.serving.host
    check_admin_exposure(bind, settings.serving.admin_token, allow_open_admin)
    if port is not None:
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"port": port})})
    state = build_state(settings, replica_id)
    app = create_app(state)
    with _return_after_signals():
        try:
            uvicorn.run(app, host=bind, port=settings.serving.port, log_level="info")
        finally:
            state.engine.close()
            flushed = state.writer.close()
            stats = state.writer.stats()
            if not flushed or stats.dropped or stats.spilled > stats.recovered:
                log.warning("capture closed: %d written, %d in %s, %d dropped", stats.written, stats.spilled - stats.recovered, state.writer.spill_dir, stats.dropped)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """Run an ASGI app with uvicorn in a thread of this process (the demo, benchmarks, tests)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
