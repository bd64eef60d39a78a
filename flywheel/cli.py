"""The `flywheel` command."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from flywheel.config import ConfigError, Settings, load_settings

app = typer.Typer(help="slm-flywheel: keep fine-tuned small language models sharp in production.", no_args_is_help=True)
model_app = typer.Typer(help="The base model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console()

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="flywheel.yaml to read (default: ./flywheel.yaml or $FLYWHEEL_CONFIG).")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _workload_settings(config: Path | None, workload: str) -> Settings:
    """The settings, after checking that `workload` is configured (exit 2 naming it if not)."""
    settings = _settings(config)
    try:
        settings.workload(workload)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    return settings


def _offline_defaults() -> None:
    # The default base model and metrics are local; never wait on a hub that cannot be reached.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from an offline box


@model_app.command("pull")
def model_pull(config: ConfigOption = None) -> None:
    """Materialize the configured base model into a cached HF checkpoint (once)."""
    _offline_defaults()
    from models.base_model import BaseModelError, resolve_base_model

    settings = _settings(config)
    with console.status(f"materializing {settings.base_model} (dequantizing the GGUF once)"):
        try:
            path = resolve_base_model(settings.base_model, settings.models_dir)
        except BaseModelError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    console.print(f"base model ready: {path}")


@app.command()
def train(
    workload: Annotated[str, typer.Argument(help="A workload name from flywheel.yaml.")],
    max_examples: Annotated[Optional[int], typer.Option(help="Override training.max_examples.")] = None,
    launch: Annotated[bool, typer.Option("--launch", help="Train on the launch data (late items under-represented).")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the `train-adapter` flow: train, evaluate on golden, register in MLflow."""
    _offline_defaults()
    from flows.train_adapter import train_adapter_flow
    from flywheel import progress

    settings = _workload_settings(config, workload)
    with progress.progress_bar():
        result = train_adapter_flow(workload=workload, config_path=str(config) if config else None, max_examples=max_examples, launch=launch)
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
    from flywheel import progress
    from flywheel.tracking import mlflow_client
    from models.base_model import resolve_base_model
    from models.inference import Predictor, load_model, load_tokenizer
    from models.registry import RegistryError, download_adapter, get_version
    from models.workload import build_task_spec

    if (text is None) == (input is None):
        console.print("[red]give either one TEXT or --input FILE[/red]")
        raise typer.Exit(2)
    if input is not None and output is None:
        console.print("[red]--input needs --output[/red]")
        raise typer.Exit(2)
    if version is not None and alias is not None:
        console.print("[red]give --version or --alias, not both[/red]")
        raise typer.Exit(2)
    settings = _workload_settings(config, workload)
    workload_config = settings.workload(workload)
    spec = build_task_spec(workload, workload_config, settings.data_dir)
    client = mlflow_client(settings)
    try:
        record = get_version(client, workload, version=version, alias=alias)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
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
            console.print(f"[red]{input}:{number}: expected a JSON object with a \"text\" field ({exc})[/red]")
            raise typer.Exit(2) from exc
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
    config: ConfigOption = None,
) -> None:
    """Start the embedded serving tier (vLLM LoRA API); loads each workload's champion."""
    _offline_defaults()
    from serving.server import serve as run_server

    run_server(_settings(config), host=host, port=port, replica_id=replica_id)


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
    from flywheel import progress
    from flywheel.simulate import simulate as run_simulation

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
    from flows.nightly_retrain import nightly_retrain
    from flywheel import progress

    _workload_settings(config, workload)
    with progress.progress_bar():
        summary = nightly_retrain(workload=workload, force=force, budget=budget, config_path=str(config) if config else None)
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
        return
    table = Table(title=f"nightly-retrain {workload}")
    table.add_column("")
    table.add_column("value")
    for key, value in summary.to_dict().items():
        table.add_row(key, "; ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


review_app = typer.Typer(help="The human review queue of teacher labels.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _queue(workload: str, config: Path | None) -> tuple[Any, Any]:
    from models.review import ReviewQueue
    from models.workload import build_task_spec

    settings = _workload_settings(config, workload)
    spec = build_task_spec(workload, settings.workload(workload), settings.data_dir)
    return ReviewQueue(settings.state_dir / "review", workload), spec


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
    from models.review import ReviewError

    queue, spec = _queue(workload, config)
    try:
        item = queue.accept(item_id, reviewer, spec)
    except ReviewError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"{item.item_id}: accepted {item.final_label!r}")


@review_app.command("correct")
def review_correct(workload: Annotated[str, typer.Argument()], item_id: Annotated[str, typer.Argument()], label: Annotated[str, typer.Argument(help="The right label (or slot JSON).")], reviewer: Annotated[str, typer.Option(help="Who reviewed it.")] = os.environ.get("USER", "reviewer"), config: ConfigOption = None) -> None:
    """Replace the teacher's label (used for training from the next run on)."""
    from models.review import ReviewError

    queue, spec = _queue(workload, config)
    try:
        item = queue.correct(item_id, label, reviewer, spec)
    except ReviewError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
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
    from flows.promote import promote

    _settings(config)
    try:
        result = promote(workload=workload, version=version, reviewer=reviewer, reason=reason, config_path=str(config) if config else None)
    except Exception as exc:  # the flow rolled everything back; say what failed
        console.print(f"[red]promotion of {workload} v{version} failed and was rolled back: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{workload}: champion is v{result['champion']} (was v{result['previous']}), serving on {', '.join(result['replicas'])}")


@app.command("rollback-guard")
def rollback_guard_cmd(config: ConfigOption = None) -> None:
    """Check recently promoted champions against the previous ones; roll back on a clear degradation."""
    _offline_defaults()
    from flows.rollback_guard import rollback_guard

    _settings(config)
    results = rollback_guard(config_path=str(config) if config else None)
    for workload, result in results.items():
        verdict = "not checked" if not result["checked"] else ("ROLLED BACK" if result["trip"] else "kept")
        console.print(f"{workload}: {verdict}: {'; '.join(result.get('reasons', [result.get('reason', '')]))}")


@app.command()
def sync(
    workload: Annotated[Optional[list[str]], typer.Option("--workload", "-w", help="Only these workloads (default: all).")] = None,
    config: ConfigOption = None,
) -> None:
    """Make every serving replica serve the registry's champion (the `sync-serving` flow)."""
    _offline_defaults()
    from flows.sync_serving import sync_serving

    _settings(config)
    try:
        results = sync_serving(config_path=str(config) if config else None, workloads=workload or None)
    except Exception as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    for name, result in results.items():
        replicas = ", ".join(f"{url}: {what}" for url, what in result["replicas"].items()) or "no replicas"
        console.print(f"{name}: champion v{result['champion']}{' (adopted from the registry)' if result.get('adopted') else ''}; {replicas}")


@app.command()
def deploy(config: ConfigOption = None) -> None:
    """Deploy the flows of prefect.yaml to the Prefect server at PREFECT_API_URL (work pool, locks, schedules)."""
    _offline_defaults()
    from deployments.deploy import DeployError
    from deployments.deploy import deploy as run_deploy

    settings = _settings(config)
    try:
        locks = run_deploy(settings)
    except DeployError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"deployed prefect.yaml; locks: {', '.join(locks)}")
    console.print("start a worker: .venv/bin/prefect worker start --pool flywheel-process")


webhook_app = typer.Typer(help="The MLflow registry webhook that starts sync-serving.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("serve")
def webhook_serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: webhook.host).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: webhook.port).")] = None,
    config: ConfigOption = None,
) -> None:
    """Receive MLflow webhooks (HMAC-verified) and start the sync-serving deployment."""
    import uvicorn

    from deployments.webhook import create_webhook_app

    settings = _settings(config)
    try:
        webhook = create_webhook_app(settings)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    uvicorn.run(webhook, host=host or settings.webhook.host, port=port or settings.webhook.port)


@webhook_app.command("register")
def webhook_register(
    url: Annotated[str, typer.Option(help="Where MLflow reaches `flywheel webhook serve`, e.g. http://127.0.0.1:8765/mlflow/webhook.")],
    config: ConfigOption = None,
) -> None:
    """Create the MLflow registry webhook (model_version_alias.created, signed with webhook.secret)."""
    from deployments.webhook import register_webhook
    from flywheel.tracking import mlflow_client

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
    from flywheel.tracking import mlflow_client
    from models.promotion import history as read_history

    settings = _settings(config)
    entries = read_history(mlflow_client(settings), workload)
    table = Table(title=f"{workload}: champion history")
    for column in ("when", "action", "who", "from", "to", "why"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.at, entry.action, entry.actor, f"v{entry.from_version}" if entry.from_version else "-", f"v{entry.to_version}", entry.reason[:80])
    console.print(table)


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
    from flywheel import progress
    from flywheel.demo import run_demo

    from flywheel.report import summary_table

    settings = _settings(config)
    started = time.perf_counter()
    with progress.progress_bar():
        report = run_demo(settings, workload=workload, scenario=scenario, budget=budget, fast=fast)
    home = Path(report.home)
    console.print(summary_table(report.to_dict()))
    console.print(f"total {time.perf_counter() - started:.0f} s. Reports: {home / 'report.html'}, {home / 'report.md'}, {home / 'report.json'}")
    console.print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}  (then http://127.0.0.1:5000)")
    console.print("Prefect UI: .venv/bin/prefect server start, then PREFECT_API_URL=http://127.0.0.1:4200/api make demo to see the demo's flow runs there")


stack_app = typer.Typer(help="The production stack on this machine: PostgreSQL, MLflow, Prefect, a worker, the webhook, the replicas.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _stack(config: Path | None) -> Any:
    from deployments.stack import Stack

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
    from deployments.deploy import DeployError
    from deployments.stack import StackError

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
