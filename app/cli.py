"""The `flywheel` command."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
import yaml
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from slm_flywheel.config import ConfigError, Settings, config_file, load_settings


class CommandError(Exception):
    """A mistake in how a command was called; the message names it and the fix."""


def _raised(exc: BaseException, module: str, name: str) -> bool:
    """`isinstance(exc, <module>.<name>)`, without importing a module that was never loaded (nothing
    it defines can have been raised), so the error path stays as light as the command."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


# Project errors whose message already names the problem and the fix.
_SELF_EXPLAINED = [
    ("slm_flywheel.models.data", "DataError"),
    ("slm_flywheel.models.base_model", "BaseModelError"),
    ("slm_flywheel.models.review", "ReviewError"),
    ("slm_flywheel.models.promotion", "PromotionError"),
    ("slm_flywheel.deployments.deploy", "DeployError"),
]


def explain(exc: BaseException) -> str | None:
    """One line naming an expected mistake and its fix, or None for a bug (whose traceback is shown).

    Errors are matched by type; Prefect raises bare RuntimeErrors for an API it cannot reach, so
    those two are matched by their message.
    """
    if isinstance(exc, (CommandError, ConfigError)):
        first, *fields = [line.strip() for line in str(exc).splitlines()]  # a validation error lists one field a line
        return " ".join([first, "; ".join(fields)]).strip()
    if _raised(exc, "slm_flywheel.models.registry", "RegistryError"):
        return f"{exc} (`flywheel history <workload>` shows the champion's moves; `flywheel train <workload>` registers a new version)"
    if any(_raised(exc, module, name) for module, name in _SELF_EXPLAINED):
        return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if _raised(exc, "mlflow.exceptions", "MlflowException"):
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return f"{exc.message}: nothing is registered under that name yet; train it first (`flywheel train <workload>`)"
        return f"the MLflow registry refused: {exc.message} (check `tracking_uri` / FLYWHEEL_TRACKING_URI)"
    if isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in str(exc):
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        return (
            f"the temporary Prefect server did not start within {timeout} s: raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (e.g. 180) on a busy machine, or run `prefect server start` "
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    if isinstance(exc, RuntimeError) and "Failed to reach API at" in str(exc):
        api = os.environ.get("PREFECT_API_URL", "PREFECT_API_URL")
        return f"cannot reach the Prefect API at {api}: start it (`prefect server start`), or unset PREFECT_API_URL to run on a temporary local server"
    return None


class _ErrorBoundary(TyperGroup):
    """The command line's one error boundary: an expected mistake becomes one line on stderr and exit
    code 2; anything else (a bug) keeps its traceback. `--debug` shows the traceback always."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None or ctx.meta.get("flywheel.debug"):
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_ErrorBoundary, help="slm-flywheel: keep fine-tuned small language models sharp in production.", no_args_is_help=True)
model_app = typer.Typer(help="The base model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
config_app = typer.Typer(help="The configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="flywheel.yaml to read (default: ./flywheel.yaml or $FLYWHEEL_CONFIG).")]


def _version() -> str:
    try:
        return package_version("slm-flywheel")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"slm-flywheel {_version()}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of any error.")] = False,
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    ctx.meta["flywheel.debug"] = debug


def _settings(config: Path | None, *, need_file: bool = True) -> Settings:
    """The settings; with no configuration file and no workloads, stop and say where it looked."""
    settings = load_settings(config)
    path = config_file(config)
    if need_file and not path.exists() and not settings.workloads:
        raise ConfigError(
            f"no flywheel.yaml found (looked for {path.resolve()}): run from the folder that holds yours, "
            "point at one with --config PATH or FLYWHEEL_CONFIG=PATH, or write the defaults here with `flywheel init`"
        )
    return settings


def _workload_settings(config: Path | None, workload: str, *, data: bool = False) -> Settings:
    """The settings, after checking that `workload` is configured and, with `data`, that its dataset is there."""
    settings = _settings(config)
    if workload not in settings.workloads:
        known = ", ".join(sorted(settings.workloads))
        raise ConfigError(f"unknown workload {workload!r}: choose one of {known} (or add it under `workloads:` in {config_file(config)})")
    if data:
        dataset = settings.workload(workload).dataset
        if not (settings.require_data_dir() / dataset).is_dir():
            raise ConfigError(f"data_dir {str(settings.data_dir)!r} has no {dataset}/ folder: set FLYWHEEL_DATA_DIR to the folder holding banking77/ and restaurant8k/")
    return settings


def _require_champion(settings: Settings, workload: str) -> None:
    """Stop before any work when `workload` has no champion yet (nothing was trained for it)."""
    if settings.tracking_uri is None and not (settings.home / "mlflow.db").exists():
        raise CommandError(f"{workload} has no champion yet: nothing is registered under {settings.home.resolve()}; train one first: flywheel train {workload}")
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.registry import CHAMPION, alias_version

    if alias_version(mlflow_client(settings), workload, CHAMPION) is None:
        raise CommandError(f"{workload} has no champion yet; train one first: flywheel train {workload}")


def _offline_defaults() -> None:
    # The default base model and metrics are local; never wait on a hub that cannot be reached.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from an offline box
    # The ephemeral API's default 20 s start-up wait fails the first run on a busy machine. Prefect
    # reads its settings once, at import: this runs before any command imports it.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _secret(value: str | None) -> str | None:
    return None if value is None else "<set>"


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="The project folder (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite the files if they are there.")] = False,
) -> None:
    """Start a project: write the default flywheel.yaml and prefect.yaml into FOLDER (default: here)."""
    from slm_flywheel.project import write_project_files

    try:
        written = write_project_files(folder, force=force)
    except FileExistsError as exc:
        raise CommandError(f"{exc} already there, nothing written: edit yours, or `flywheel init --force` to overwrite with the defaults") from None
    console.print(f"wrote {', '.join(str(path) for path in written)}")
    console.print("next: set FLYWHEEL_DATA_DIR (or data_dir), then flywheel train banking-intent")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the resolved configuration (file, FLYWHEEL_* overrides, defaults) and where it came from."""
    path = config_file(config)
    settings = _settings(config, need_file=False)
    overrides = sorted(name for name in os.environ if name.upper().startswith("FLYWHEEL_") and name[9:].split("__")[0].lower() in Settings.model_fields)
    values = settings.model_dump(mode="json")
    values["serving"]["admin_token"] = _secret(settings.serving.admin_token)
    values["webhook"]["secret"] = _secret(settings.webhook.secret)
    typer.echo(f"# file: {path.resolve() if path.exists() else f'none ({path.resolve()} does not exist; defaults only)'}")
    typer.echo(f"# environment overrides: {', '.join(overrides) or 'none'}")
    typer.echo(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), nl=False)


@model_app.command("pull")
def model_pull(config: ConfigOption = None) -> None:
    """Materialize the configured base model into a cached HF checkpoint (once)."""
    _offline_defaults()
    from slm_flywheel.models.base_model import resolve_base_model

    settings = _settings(config, need_file=False)
    with console.status(f"materializing {settings.base_model} (dequantizing the GGUF once)"):
        path = resolve_base_model(settings.base_model, settings.models_dir)
    console.print(f"base model ready: {path}")


@app.command()
def train(
    workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")],
    max_examples: Annotated[Optional[int], typer.Option(help="Override training.max_examples.")] = None,
    launch: Annotated[bool, typer.Option("--launch", help="Train on the launch data (late items under-represented).")] = False,
    profile: Annotated[str, typer.Option(help="A training profile from the workload's training_profiles (e.g. full); default: its training block.")] = "default",
    config: ConfigOption = None,
) -> None:
    """Run the `train-adapter` flow: train, evaluate on golden, register in MLflow."""
    _offline_defaults()
    # The configuration is checked before the flow's imports (torch, transformers, Prefect: ~4 s),
    # so a newcomer's mistake is reported at once.
    settings = _workload_settings(config, workload, data=True)
    settings.workloads[workload].training_for(profile)  # an unknown profile fails here, before Prefect starts
    from slm_flywheel.flows.train_adapter import train_adapter_flow
    from slm_flywheel import progress

    with progress.progress_bar():
        result = train_adapter_flow(
            workload=workload, config_path=str(config) if config else None, max_examples=max_examples, launch=launch, profile=profile
        )
    table = Table(title=f"{workload} version {result.version} (@{result.alias})")
    table.add_column("golden metric")
    table.add_column("value", justify="right")
    for key, value in result.golden.items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("train seconds", f"{result.train_seconds:.0f}")
    table.add_row("train tokens/s", f"{result.tokens_per_second:.0f}")
    console.print(table)
    console.print(f"MLflow run {result.run_id}, data hash {result.data_hash}, tracking {settings.resolved_tracking_uri}")


@app.command()
def predict(
    workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")],
    text: Annotated[Optional[str], typer.Argument(help="One input text (or use --input).")] = None,
    version: Annotated[Optional[int], typer.Option(help="Registry version to load.")] = None,
    alias: Annotated[Optional[str], typer.Option(help="Registry alias to load (default: champion).")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", help="JSONL file of {\"text\": ...} lines.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Where --input's answers go (JSONL, input order).")] = None,
    config: ConfigOption = None,
) -> None:
    """Answer with base + the registered adapter: one text, or a JSONL file in batches."""
    _offline_defaults()
    if (text is None) == (input is None):
        raise CommandError("give either one TEXT or --input FILE")
    if input is not None and output is None:
        raise CommandError("--input needs --output FILE")
    if version is not None and alias is not None:
        raise CommandError("give --version or --alias, not both")
    settings = _workload_settings(config, workload, data=True)
    if version is None and alias is None:
        _require_champion(settings, workload)
    from slm_flywheel import progress
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.base_model import resolve_base_model
    from slm_flywheel.models.inference import Predictor, load_model, load_tokenizer
    from slm_flywheel.models.registry import download_adapter, get_version
    from slm_flywheel.models.context import resolve_workload
    context = resolve_workload(settings, workload)
    workload_config, spec = context.config, context.spec
    client = mlflow_client(settings)
    record = get_version(client, workload, version=version, alias=alias)
    base_path = resolve_base_model(settings.base_model, settings.models_dir)
    adapter = download_adapter(client, record, settings.adapters_dir)
    predictor = Predictor(load_model(base_path, adapter), load_tokenizer(base_path), spec, workload_config.eval_batch_size)
    if text is not None:
        (result,) = predictor.predict([text])
        answer = result.answer if result.valid else "<invalid>"
        typer.echo(json.dumps({"workload": workload, "version": record.version, "answer": answer, "confidence": round(result.confidence, 4), "valid": result.valid}, ensure_ascii=False))
        return
    assert input is not None and output is not None
    texts = []
    for number, line in enumerate(input.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            texts.append(str(item["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CommandError(f"{input}:{number}: expected a JSON object with a \"text\" field ({exc})") from exc
    with progress.progress_bar(), output.open("w") as handle:
        batch = predictor.batch_size
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]
            for item_text, result in zip(chunk, predictor.predict(chunk)):
                row = {"text": item_text, "answer": result.answer if result.valid else None, "confidence": result.confidence, "valid": result.valid}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            progress.report(f"predict {workload}", min(start + batch, len(texts)), len(texts))
    console.print(f"wrote {len(texts)} answers to {output} (version {record.version})")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: serving.host).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: serving.port).")] = None,
    replica_id: Annotated[Optional[str], typer.Option(help="This replica's id in captured samples.")] = None,
    allow_open_admin: Annotated[bool, typer.Option("--allow-open-admin", help="Serve a non-loopback host with no admin token (load/unload/route open to anyone who reaches it).")] = False,
    config: ConfigOption = None,
) -> None:
    """Start the embedded serving tier (vLLM LoRA API); loads each workload's champion."""
    _offline_defaults()
    from slm_flywheel.serving.server import serve as run_server

    configured = _settings(config)
    settings = _served_settings(configured, host, port)
    _require_free_port(settings.serving.host, settings.serving.port)  # before minutes of model loading
    if settings.serving.local_url != configured.serving.local_url and configured.serving.replicas == [configured.serving.local_url]:
        # `sync` and `promote` run in other processes: they push to this replica only if they see the same address.
        typer.echo(
            f"note: other commands (sync, promote) look for this replica at {configured.serving.local_url}; give them the same "
            f"address: export FLYWHEEL_SERVING__HOST={settings.serving.host} FLYWHEEL_SERVING__PORT={settings.serving.port} (or set serving.host/port in flywheel.yaml)",
            err=True,
        )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))  # uvicorn's look
    logging.getLogger("flywheel.serving").addHandler(handler)
    logging.getLogger("flywheel.serving").setLevel(logging.INFO)
    run_server(settings, replica_id=replica_id, allow_open_admin=allow_open_admin)


def _served_settings(settings: Settings, host: str | None, port: int | None) -> Settings:
    """`settings` with --host/--port applied; a default `serving.replicas` (this server) follows them."""
    serving = settings.serving
    moved = serving.model_copy(update={"host": host or serving.host, "port": port or serving.port})
    if serving.replicas == [serving.local_url]:
        moved.replicas = [moved.local_url]
    return settings.model_copy(update={"serving": moved})


def _require_free_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: only a live listener conflicts
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror}; stop what runs there, or pick another port with --port") from exc


@app.command()
def simulate(
    workload: Annotated[str, typer.Option("--workload", "-w", help="A workload name from flywheel.yaml.")],
    requests: Annotated[int, typer.Option("--requests", "-n", help="How many requests to send.")] = 200,
    scenario: Annotated[str, typer.Option("--scenario", "-s", help="steady | prior-shift | new-phrasing")] = "steady",
    url: Annotated[str, typer.Option(help="The serving tier's base URL.")] = "http://127.0.0.1:8000",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the request stream.")] = 0,
    truth: Annotated[Optional[Path], typer.Option(help="Ground-truth JSONL (default: <home>/simulator/ground_truth.jsonl).")] = None,
    config: ConfigOption = None,
) -> None:
    """Send simulated production traffic over HTTP; hidden gold answers go to a separate file."""
    from slm_flywheel import progress
    from slm_flywheel.app.simulate import simulate as run_simulation

    settings = _settings(config)
    try:
        with progress.progress_bar():
            result = run_simulation(
                settings, workload, scenario, requests, url, truth_path=truth, concurrency=concurrency, seed=seed,
                progress=lambda done, total: progress.report(f"simulate {scenario}", done, total),
            )
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(
        f"{result.sent} requests ({result.failed} failed) in {result.seconds:.1f} s; "
        f"live accuracy vs hidden gold {result.live_accuracy:.3f}; ground truth appended to {result.truth_path}"
    )
    if result.failed:
        raise typer.Exit(1)


@app.command()
def nightly(
    workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")],
    force: Annotated[bool, typer.Option("--force", help="Relabel and retrain even without drift.")] = False,
    budget: Annotated[Optional[int], typer.Option(help="Samples to relabel (default: relabel.budget).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run `nightly-retrain` locally: drift → relabel → contracts → retrain → gate."""
    _offline_defaults()
    _require_champion(_workload_settings(config, workload, data=True), workload)
    from slm_flywheel.flows.nightly_retrain import nightly_retrain
    from slm_flywheel import progress

    with progress.progress_bar():
        summary = nightly_retrain(workload=workload, force=force, budget=budget, config_path=str(config) if config else None)
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
        return
    table = Table(title=f"nightly-retrain {workload}")
    table.add_column("")
    table.add_column("value")
    for key, value in summary.to_dict().items():
        table.add_row(key, "; ".join(map(_summary_cell, value)) if isinstance(value, list) else str(value))
    console.print(table)


def _summary_cell(item: object) -> str:
    """One list entry of a run summary: a drift test reads `name p=… effect=… (drift|ok)`."""
    if isinstance(item, dict) and {"name", "p_value", "effect", "drifted"} <= item.keys():
        return f"{item['name']} p={item['p_value']:.3g} effect={item['effect']:.3g} ({'drift' if item['drifted'] else 'ok'})"
    return str(item)


review_app = typer.Typer(help="The human review queue of teacher labels.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _queue(workload: str, config: Path | None) -> tuple[Any, Any]:
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.models.review import ReviewQueue

    settings = _workload_settings(config, workload)
    return ReviewQueue(settings.state_dir / "review", workload), resolve_workload(settings, workload).spec


@review_app.command("list")
def review_list(workload: Annotated[str, typer.Argument()], show_all: Annotated[bool, typer.Option("--all", help="Reviewed items too.")] = False, config: ConfigOption = None) -> None:
    """Items waiting for review (teacher spot checks and out-of-schema answers)."""
    queue, _ = _queue(workload, config)
    items = queue.items() if show_all else queue.pending()
    table = Table(title=f"review queue: {workload} ({len(queue.pending())} pending)")
    for column in ("id", "text", "teacher label", "reason", "status", "final label"):
        table.add_column(column)
    for item in items:
        table.add_row(item.item_id, item.text[:60], str(item.teacher_label), item.reason, item.status, str(item.final_label or ""))
    console.print(table)
    agreement, count = queue.agreement()
    console.print(f"teacher-reviewer agreement: {'n/a' if agreement is None else f'{agreement:.2f}'} over {count} spot checks")


@review_app.command("accept")
def review_accept(workload: Annotated[str, typer.Argument()], item_id: Annotated[str, typer.Argument()], reviewer: Annotated[str, typer.Option(help="Who reviewed it.")] = os.environ.get("USER", "reviewer"), config: ConfigOption = None) -> None:
    """Keep the teacher's label."""
    queue, spec = _queue(workload, config)
    item = queue.accept(item_id, reviewer, spec)
    console.print(f"{item.item_id}: accepted {item.final_label!r}")


@review_app.command("correct")
def review_correct(workload: Annotated[str, typer.Argument()], item_id: Annotated[str, typer.Argument()], label: Annotated[str, typer.Argument(help="The right label (or slot JSON).")], reviewer: Annotated[str, typer.Option(help="Who reviewed it.")] = os.environ.get("USER", "reviewer"), config: ConfigOption = None) -> None:
    """Replace the teacher's label (used for training from the next run on)."""
    queue, spec = _queue(workload, config)
    item = queue.correct(item_id, label, reviewer, spec)
    console.print(f"{item.item_id}: {item.status} -> {item.final_label!r}")


@app.command("promote")
def promote_cmd(
    workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")],
    version: Annotated[int, typer.Argument(help="The registry version to make champion.")],
    reviewer: Annotated[str, typer.Option(help="Who approves the promotion.")] = os.environ.get("USER", "reviewer"),
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "reviewer approval",
    config: ConfigOption = None,
) -> None:
    """Promote a version and push it to every serving replica, all or nothing (the `promote` flow)."""
    _offline_defaults()
    from slm_flywheel.flows.promote import promote
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.registry import get_version

    get_version(mlflow_client(_workload_settings(config, workload)), workload, version=version)
    try:
        result = promote(workload=workload, version=version, reviewer=reviewer, reason=reason, config_path=str(config) if config else None)
    except Exception as exc:  # the flow rolled everything back; say what failed
        console.print(f"[red]promotion of {workload} v{version} failed and was rolled back: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{workload}: champion is v{result.champion} (was v{result.previous}), serving on {', '.join(result.replicas)}")


@app.command("rollback-guard")
def rollback_guard_cmd(config: ConfigOption = None) -> None:
    """Check recently promoted champions against the previous ones; roll back on a clear degradation."""
    _offline_defaults()
    from slm_flywheel.flows.rollback_guard import rollback_guard

    _settings(config)
    results = rollback_guard(config_path=str(config) if config else None)
    for workload, result in results.items():
        verdict = "not checked" if not result.checked else ("ROLLED BACK" if result.trip else "kept")
        console.print(f"{workload}: {verdict}: {'; '.join(result.reasons)}")


@app.command()
def sync(
    workload: Annotated[Optional[list[str]], typer.Option("--workload", "-w", help="Only these workloads (default: all).")] = None,
    config: ConfigOption = None,
) -> None:
    """Make every serving replica serve the registry's champion (the `sync-serving` flow)."""
    _offline_defaults()
    from slm_flywheel.flows.sync_serving import sync_serving

    for name in workload or []:
        _workload_settings(config, name)
    _settings(config)
    try:
        results = sync_serving(config_path=str(config) if config else None, workloads=workload or None)
    except Exception as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    for name, result in results.items():
        replicas = ", ".join(f"{url}: {what}" for url, what in result.replicas.items()) or "no replicas"
        console.print(f"{name}: champion v{result.champion}{' (adopted from the registry)' if result.adopted else ''}; {replicas}")


@app.command()
def deploy(config: ConfigOption = None) -> None:
    """Deploy the flows of prefect.yaml to the Prefect server at PREFECT_API_URL (work pool, locks, schedules)."""
    _offline_defaults()
    from slm_flywheel.deployments.deploy import deploy as run_deploy

    done = run_deploy(_settings(config), config_path=config_file(config))
    console.print(f"deployed {', '.join(done.deployed)}; locks: {', '.join(done.locks)}")
    for name, workload in done.skipped.items():
        console.print(f"skipped {name}: its workload {workload!r} is not configured")
    console.print(f"start a worker: {Path(sys.executable).with_name('prefect')} worker start --pool flywheel-process")


webhook_app = typer.Typer(help="The MLflow registry webhook that starts sync-serving.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("serve")
def webhook_serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: webhook.host).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: webhook.port).")] = None,
    config: ConfigOption = None,
) -> None:
    """Receive MLflow webhooks (HMAC-verified) and start the sync-serving deployment on the Prefect
    server at PREFECT_API_URL (refused when it is not set or not reachable)."""
    from slm_flywheel.deployments.webhook import serve_webhook

    settings = _settings(config)
    try:
        serve_webhook(settings, host or settings.webhook.host, port or settings.webhook.port)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from exc


@webhook_app.command("register")
def webhook_register(
    url: Annotated[str, typer.Option(help="Where MLflow reaches `flywheel webhook serve`, e.g. http://127.0.0.1:8765/mlflow/webhook.")],
    config: ConfigOption = None,
) -> None:
    """Create the MLflow registry webhook (model_version_alias.created, signed with webhook.secret)."""
    from slm_flywheel.deployments.webhook import register_webhook
    from slm_flywheel.tracking import mlflow_client

    settings = _settings(config)
    if not settings.webhook.secret:
        console.print("[red]webhook.secret is not set: set FLYWHEEL_WEBHOOK__SECRET[/red]")
        raise typer.Exit(2)
    hook = register_webhook(mlflow_client(settings), url, settings.webhook.secret)
    console.print(f"MLflow webhook {hook.name} ({hook.webhook_id}) -> {url}. The MLflow server must allow it: "
                  "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true for a loopback URL.")


@app.command()
def history(workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")], config: ConfigOption = None) -> None:
    """Every move of the champion alias: who, when, from, to, why."""
    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.promotion import history as read_history

    settings = _workload_settings(config, workload)
    _require_champion(settings, workload)
    entries = read_history(mlflow_client(settings), workload)
    table = Table(title=f"{workload}: champion history")
    for column in ("when", "action", "who", "from", "to", "why"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.at, entry.action, entry.actor, f"v{entry.from_version}" if entry.from_version else "-", f"v{entry.to_version}", entry.reason[:80])
    console.print(table)


@app.command()
def costs(
    workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")],
    since: Annotated[Optional[str], typer.Option(help="First UTC day to count, YYYY-MM-DD (default: every recorded day).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ledger as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """The cost ledger: spend per day (frontier calls, relabelling, serving, training) against frontier-only."""
    _offline_defaults()
    from datetime import date

    from slm_flywheel.tracking import mlflow_client
    from slm_flywheel.models.costs import LedgerError
    from slm_flywheel.models.usage import UsageLogError
    from slm_flywheel.models.context import resolve_workload
    from slm_flywheel.tasks.costs import break_even_text, compute_ledger, ledger_rows

    settings = _workload_settings(config, workload)
    try:
        first_day = date.fromisoformat(since) if since else None
    except ValueError as exc:
        console.print(f"[red]--since must be a date YYYY-MM-DD, got {since!r}[/red]")
        raise typer.Exit(2) from exc
    try:
        ledger = compute_ledger(resolve_workload(settings, workload), mlflow_client(settings), first_day)
    except (LedgerError, UsageLogError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(ledger.to_dict(), indent=1))
        return
    header, rows = ledger_rows(ledger)
    table = Table(title=f"{workload}: costs against frontier-only ({ledger.frontier_model}), USD")
    for column in header:
        table.add_column(column, justify="left" if column == "day" else "right")
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == "total" else None)
    console.print(table)
    console.print(break_even_text(ledger))
    demo_config = settings.home / "demo" / "flywheel.yaml"
    if not ledger.days and demo_config.exists():
        console.print(f"nothing recorded under {settings.home}; the demo's records: flywheel costs {workload} --config {demo_config}")


@app.command()
def demo(
    workload: Annotated[str, typer.Option(help="The workload to run the flywheel for.")] = "banking-intent",
    scenario: Annotated[str, typer.Option(help="The drift scenario: prior-shift or new-phrasing.")] = "prior-shift",
    budget: Annotated[Optional[int], typer.Option(help="Teacher labels to buy (default: by size).")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Tiny sizes: a smoke run of a few minutes.")] = False,
    config: ConfigOption = None,
) -> None:
    """The whole flywheel on embedded defaults: launch → drift → relabel → retrain → gate → push → rollback."""
    _offline_defaults()
    from slm_flywheel import progress
    from slm_flywheel.app.demo import run_demo

    from slm_flywheel.app.report import summary_table

    settings = _settings(config)
    started = time.perf_counter()
    with progress.progress_bar():
        report = run_demo(settings, workload=workload, scenario=scenario, budget=budget, fast=fast)
    home = Path(report.home)
    console.print(summary_table(report))
    console.print(f"total {time.perf_counter() - started:.0f} s. Reports: {home / 'report.html'}, {home / 'report.md'}, {home / 'report.json'}")
    console.print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}  (then http://127.0.0.1:5000)")
    console.print(f"Costs: flywheel costs {workload} --config {home / 'flywheel.yaml'}")
    console.print("Prefect UI: .venv/bin/prefect server start, then PREFECT_API_URL=http://127.0.0.1:4200/api make demo to see the demo's flow runs there")


stack_app = typer.Typer(help="The production stack on this machine: PostgreSQL, MLflow, Prefect, a worker, the webhook, the replicas.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _stack(config: Path | None) -> Any:
    from slm_flywheel.deployments.stack import Stack

    settings = _settings(config)
    return Stack(settings, Path(config or os.environ.get("FLYWHEEL_CONFIG", "flywheel.yaml")))


def _print_stack(stack: Any, statuses: list[Any]) -> bool:
    table = Table("service", "pid", "healthy", "url")
    for status in statuses:
        table.add_row(status.name, str(status.pid or "-"), "[green]yes[/green]" if status.healthy else "[red]no[/red]", status.url)
    console.print(table)
    for name, url in stack.ui_urls().items():
        console.print(f"{name}: {url}")
    console.print(f"pids and logs: {stack.dir}")
    return all(status.healthy for status in statuses)


@stack_app.command("up")
def stack_up(config: ConfigOption = None) -> None:
    """Start every service that is not running (ports, credentials, data dirs: `stack` in flywheel.yaml)."""
    from slm_flywheel.deployments.deploy import DeployError
    from slm_flywheel.deployments.stack import StackError

    stack = _stack(config)
    try:
        statuses = stack.up()
    except (StackError, DeployError) as exc:
        console.print(f"[red]{exc}[/red]\nstop what started with `flywheel stack down`")
        raise typer.Exit(1) from exc
    if not _print_stack(stack, statuses):
        raise typer.Exit(1)


@stack_app.command("status")
def stack_status(config: ConfigOption = None) -> None:
    """Each service's pid and health, and the MLflow and Prefect UI URLs (exit 1 if one is down)."""
    stack = _stack(config)
    if not _print_stack(stack, stack.status()):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(config: ConfigOption = None) -> None:
    """Stop every service of the stack and the flow runs it started; the data stays."""
    stopped = _stack(config).down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
