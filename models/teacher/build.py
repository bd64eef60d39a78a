"""The configured teacher of a workload, built from its `teacher` config (no Prefect here: a
Prefect Secret block's key is resolved by the task layer and passed in as `api_key`)."""

from __future__ import annotations

from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.models.frontier import FrontierClient
from slm_flywheel.models.teacher.api import OpenAICompatibleTeacher
from slm_flywheel.models.teacher.records import Teacher
from slm_flywheel.models.teacher.simulation import LiveGold, SimulatedTeacher, ground_truth_path, read_ground_truth, request_gold_path
from slm_flywheel.models.usage import Purpose, UsageLog, usage_path


def frontier_client(context: WorkloadContext, api_key: str | None = None) -> FrontierClient:
    """The workload's frontier model (`teacher.kind: openai`); without `api_key` the client reads
    `teacher.api_key_env` and names it when it is missing; the price is `costs.frontier_prices`."""
    config = context.config.teacher
    return FrontierClient(
        base_url=config.base_url or "", model=config.model or "", api_key=api_key, api_key_env=config.api_key_env,
        price=context.settings.costs.frontier_prices[config.model or ""],  # present: checked when the config loads
        max_retries=config.max_retries, timeout_s=config.timeout_s,
        reasoning=config.reasoning, reasoning_tokens=config.reasoning_tokens,
    )


def teacher_for(context: WorkloadContext, purpose: Purpose | None, *, budget_usd: float, api_key: str | None = None, on_request_path: bool = False) -> Teacher:
    """The SIMULATED teacher (offline, demo) or an OpenAI-compatible API, with a per-run budget.

    With a `purpose`, every call it pays is appended to the workload's usage log under it. On the
    request path (the router) the SIMULATED teacher knows an input by the caller's request id,
    from the gold the simulator writes before it sends (`request_gold_path`); offline (relabel,
    audit) by the server's request id, from the gold written after.
    """
    settings, spec, config = context.settings, context.spec, context.config.teacher
    usage_log = UsageLog(usage_path(settings.state_dir, spec.name), spec.name, purpose) if purpose else None
    if config.kind == "simulated":
        return SimulatedTeacher(
            spec, LiveGold(request_gold_path(settings.home)) if on_request_path else read_ground_truth(ground_truth_path(settings.home)), error_rate=config.simulated_error_rate,
            price_per_item_usd=config.simulated_price_per_item, latency_s=config.simulated_latency_s,
            budget_usd=budget_usd, usage_log=usage_log,
        )
    return OpenAICompatibleTeacher(
        spec, frontier_client(context, api_key), budget_usd=budget_usd, batch_size=config.batch_size,
        max_concurrency=config.max_concurrency, cache_dir=settings.state_dir / "teacher-cache", usage_log=usage_log,
    )
