"""The cost ledger: what a workload costs with its small model, and what frontier-only would have.

Derived only from records that exist anyway, so it cannot drift from them:
* the sample store: requests per day, their tokens (a token column when the store has one,
  else counted with the base model's tokenizer), and which were served by a frontier model
  (a `served_by` column equal to "frontier", written by a router; without one, every request
  was served by the small model), and which small-model answers the router also asked the
  frontier for, off the request path (an `audit_answer`: each one a paid frontier call, priced at
  the request's own tokens as a fallback is);
* the usage logs (`models/usage.py`): every call paid to the teacher, for relabelling or for
  the rollback guard's audits, and every audit's agreement with the served answers;
* MLflow: the training runs' `train_seconds`.

Per UTC day it prices them with `CostConfig` and sets them against the frontier-only
counterfactual: every request sent to `frontier_model` at the measured tokens. The counterfactual
counts the workload's prompt and answer only, not the instructions (label set, schema) a frontier
prompt would also need, so it is a lower bound and the savings are never overstated.
Nothing here does I/O: `tasks/costs.py` reads the records and hands them over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from typing import Any

from slm_flywheel.config import CostConfig
from slm_flywheel.models.router_stats import FRONTIER
from slm_flywheel.models.usage import SIMULATED_MODEL, AuditRecord, UsageRecord



class LedgerError(ValueError):
    """A record the ledger cannot price; the message names the record and the config field."""


@dataclass(frozen=True)
class TrafficDay:
    """One workload's captured traffic on one UTC day, and what the serving fleet did that day."""

    day: date
    requests: int
    frontier_served: int
    prompt_tokens: int  # every request's prompt (template + input)
    completion_tokens: int  # every request's answer
    frontier_prompt_tokens: int  # of the frontier-served requests only
    frontier_completion_tokens: int
    fleet_requests: int  # every workload's requests that day: the serving cost is shared by them
    serving_hours: float  # hours the fleet is paid for that day
    router_audits: int = 0  # small-model answers the router also had the frontier answer
    router_audit_prompt_tokens: int = 0
    router_audit_completion_tokens: int = 0


@dataclass(frozen=True)
class TrainingRun:
    """One MLflow training run: when it started and how long it trained."""

    run_id: str
    started: datetime
    seconds: float


@dataclass(frozen=True)
class CostLine:
    """One day (or the total) of one workload's ledger. Money in USD."""

    period: str  # an ISO date, or "total"
    requests: int = 0
    slm_served: int = 0
    frontier_served: int = 0
    relabel_calls: int = 0
    audit_calls: int = 0  # the rollback guard's teacher calls and the router's audits
    prompt_tokens: int = 0  # of the served requests
    completion_tokens: int = 0
    teacher_tokens: int = 0  # prompt + completion tokens of the paid teacher calls
    fallback_usd: float = 0.0  # requests served by the frontier model
    audit_usd: float = 0.0
    relabel_usd: float = 0.0
    serving_usd: float = 0.0  # this workload's share of the fleet, by requests
    training_usd: float = 0.0
    training_seconds: float = 0.0
    frontier_only_usd: float = 0.0  # every request at the frontier model's price
    audited: int = 0  # served answers the teacher checked
    agreed: int = 0

    @property
    def frontier_usd(self) -> float:
        """Everything paid to frontier APIs: fallbacks, audits and relabelling."""
        return self.fallback_usd + self.audit_usd + self.relabel_usd

    @property
    def cost_usd(self) -> float:
        return self.frontier_usd + self.serving_usd + self.training_usd

    @property
    def savings_usd(self) -> float:
        return self.frontier_only_usd - self.cost_usd

    @property
    def savings_pct(self) -> float | None:
        return 100 * self.savings_usd / self.frontier_only_usd if self.frontier_only_usd else None

    @property
    def audited_agreement(self) -> float | None:
        """Share of audited served answers equal to the frontier's (the frontier scores 1.0 here)."""
        return self.agreed / self.audited if self.audited else None

    def to_dict(self) -> dict[str, Any]:
        derived = ("frontier_usd", "cost_usd", "savings_usd", "savings_pct", "audited_agreement")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


@dataclass(frozen=True)
class CostLedger:
    """A workload's costs per day and in total, against frontier-only, with the break-even volume."""

    workload: str
    frontier_model: str
    days: list[CostLine]
    total: CostLine
    fixed_usd_per_day: float  # serving share, training, relabelling and audits, per ledger day
    frontier_usd_per_request: float | None  # at the measured mean tokens
    # Requests a day above which the small model costs less than frontier-only; None when it never does.
    break_even_requests_per_day: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "frontier_model": self.frontier_model,
            "days": [line.to_dict() for line in self.days],
            "total": self.total.to_dict(),
            "fixed_usd_per_day": self.fixed_usd_per_day,
            "frontier_usd_per_request": self.frontier_usd_per_request,
            "break_even_requests_per_day": self.break_even_requests_per_day,
        }


def format_usd(value: float) -> str:
    """Dollars to the cent; an amount under a cent (one request's price) to two significant digits."""
    if abs(value) >= 0.01 or value == 0:
        return f"${value:,.2f}"
    decimals = min(8, 1 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}"


def call_usd(record: UsageRecord, prices: CostConfig, simulated_price_per_item: float) -> float:
    """What one paid call cost at the configured prices."""
    if record.model == SIMULATED_MODEL:
        return record.items * simulated_price_per_item
    price = prices.frontier_prices.get(record.model)
    if price is None:
        raise LedgerError(
            f"the usage log of {record.workload!r} has {record.purpose} calls to {record.model!r} "
            f"(at {record.at.isoformat()}), which has no entry in costs.frontier_prices"
        )
    return price.usd(record.prompt_tokens, record.completion_tokens)


def _sum(lines: Iterable[CostLine], period: str) -> CostLine:
    totals: dict[str, Any] = {"period": period}
    for item in fields(CostLine):
        if item.name != "period":
            totals[item.name] = sum(getattr(line, item.name) for line in lines)
    return CostLine(**totals)


def build_ledger(
    workload: str,
    traffic: list[TrafficDay],
    usage: list[UsageRecord],
    audits: list[AuditRecord],
    training: list[TrainingRun],
    prices: CostConfig,
    *,
    simulated_price_per_item: float = 0.0,
    since: date | None = None,
) -> CostLedger:
    """Price one workload's records per UTC day (from `since` when given).

    Args:
        traffic: the workload's captured traffic per day (`capture_traffic`).
        usage / audits: the workload's usage and audit logs (`models/usage.py`).
        training: the workload's MLflow training runs.
        simulated_price_per_item: the price of the simulated teacher's calls.
    Raises:
        LedgerError: a paid call to a model without a price.
    """
    frontier = prices.frontier_prices[prices.frontier_model]
    lines: dict[date, dict[str, Any]] = {}

    def line(day: date) -> dict[str, Any]:
        return lines.setdefault(day, {"period": day.isoformat()})

    def add(day: date, **values: float) -> None:
        entry = line(day)
        for key, value in values.items():
            entry[key] = entry.get(key, 0) + value

    for day in traffic:
        share = day.requests / day.fleet_requests if day.fleet_requests else 0.0
        add(
            day.day,
            requests=day.requests,
            slm_served=day.requests - day.frontier_served,
            frontier_served=day.frontier_served,
            prompt_tokens=day.prompt_tokens,
            completion_tokens=day.completion_tokens,
            fallback_usd=frontier.usd(day.frontier_prompt_tokens, day.frontier_completion_tokens),
            serving_usd=day.serving_hours * prices.serving_usd_per_hour * prices.serving_replicas * share,
            frontier_only_usd=frontier.usd(day.prompt_tokens, day.completion_tokens),
            audit_calls=day.router_audits,
            audit_usd=frontier.usd(day.router_audit_prompt_tokens, day.router_audit_completion_tokens),
        )
    for record in usage:
        usd = call_usd(record, prices, simulated_price_per_item)
        day, tokens = record.at.date(), record.prompt_tokens + record.completion_tokens
        if record.purpose == "audit":
            add(day, audit_calls=1, audit_usd=usd, teacher_tokens=tokens)
        else:
            add(day, relabel_calls=1, relabel_usd=usd, teacher_tokens=tokens)
    for audit in audits:
        add(audit.at.date(), audited=audit.audited, agreed=audit.agreed)
    for run in training:
        add(run.started.date(), training_seconds=run.seconds, training_usd=run.seconds / 3600 * prices.training_usd_per_hour)
    days = [CostLine(**lines[day]) for day in sorted(lines) if since is None or day >= since]
    total = _sum(days, "total")
    per_request = total.frontier_only_usd / total.requests if total.requests else None
    fixed = (total.serving_usd + total.training_usd + total.relabel_usd + total.audit_usd) / len(days) if days else 0.0
    break_even = None
    if per_request is not None:
        # Each request the small model serves saves the frontier price; a frontier-served one saves nothing.
        saved_per_request = per_request - total.fallback_usd / total.requests
        break_even = fixed / saved_per_request if saved_per_request > 0 else None
    return CostLedger(workload, prices.frontier_model, days, total, fixed, per_request, break_even)


def capture_traffic(
    frames: dict[str, Any],
    workload: str,
    prompt_template: str,
    count_tokens: Callable[[list[str]], list[int]],
    serving_hours_per_day: float | None,
) -> list[TrafficDay]:
    """`workload`'s traffic per UTC day from the sample store's frames of every workload.

    Args:
        frames: workload name -> its captured samples (`serving.capture.read_samples`); all of
            them, since the serving cost of a day is shared by every workload's requests.
        prompt_template: the workload's prompt, filled with each input to count its tokens.
        count_tokens: token counts of texts (the base model's tokenizer), used when the store
            has no `prompt_tokens` / `completion_tokens` columns.
        serving_hours_per_day: hours the fleet is paid for a day; None = the span of the day's
            traffic (every workload), in started hours.
    """
    import pandas as pd

    frame = frames.get(workload)
    if frame is None or not len(frame):
        return []
    fleet = pd.concat([pd.to_datetime(other["timestamp"], utc=True) for other in frames.values() if len(other)])
    fleet_days = fleet.dt.date
    fleet_requests = fleet_days.value_counts().to_dict()
    span = fleet.groupby(fleet_days).agg(lambda stamps: (stamps.max() - stamps.min()).total_seconds())
    frame = frame.copy()
    frame["day"] = pd.to_datetime(frame["timestamp"], utc=True).dt.date
    if {"prompt_tokens", "completion_tokens"} <= set(frame.columns):
        frame["p"], frame["c"] = frame["prompt_tokens"].astype(int), frame["completion_tokens"].astype(int)
    else:
        frame["p"] = count_tokens([prompt_template.format(text=text) for text in frame["input"]])
        frame["c"] = count_tokens([str(answer) if answer is not None else "" for answer in frame["answer"]])
    frame["frontier"] = frame["served_by"].eq(FRONTIER) if "served_by" in frame.columns else False
    frame["audited"] = frame["audit_answer"].notna() if "audit_answer" in frame.columns else False
    days = []
    for day, rows in frame.groupby("day", sort=True):
        routed, audited = rows[rows["frontier"]], rows[rows["audited"]]
        if serving_hours_per_day is None:
            hours = float(min(24, max(1, math.ceil(span.get(day, 0.0) / 3600))))
        else:
            hours = float(serving_hours_per_day)
        days.append(
            TrafficDay(
                day=day,
                requests=len(rows),
                frontier_served=len(routed),
                prompt_tokens=int(rows["p"].sum()),
                completion_tokens=int(rows["c"].sum()),
                frontier_prompt_tokens=int(routed["p"].sum()),
                frontier_completion_tokens=int(routed["c"].sum()),
                fleet_requests=int(fleet_requests.get(day, len(rows))),
                serving_hours=hours,
                router_audits=len(audited),
                router_audit_prompt_tokens=int(audited["p"].sum()),
                router_audit_completion_tokens=int(audited["c"].sum()),
            )
        )
    return days
