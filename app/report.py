"""The demo's final report: `report.md` (plots beside it), a self-contained `report.html`, and the
rich table the CLI prints.

Both files are rendered from one list of blocks, so they always say the same thing. They render
from the typed `DemoReport` that `flywheel demo` fills in as it goes; the fields that may be None
(a `--fast` run may not promote, a phase may have no gold answers) say "n/a", and the plot that
needs them is left out.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from slm_flywheel.models.costs import CostLedger, format_usd

if TYPE_CHECKING:  # annotations only: the report module stays light for the command line
    from slm_flywheel.models.drift import DriftTest
    from slm_flywheel.models.promotion import HistoryEntry

NA = "n/a"
DRIFT_RUNS = (("launch", "nightly run on launch traffic"), ("drifted", "nightly run on drifted traffic"))
GATE_MODELS = ("base", "champion", "candidate")
SCENARIOS = {
    "steady": "the launch mix of requests",
    "prior-shift": "most traffic moves onto the items that were rare at launch, as after a product launch",
    "new-phrasing": "the launch mix, rewritten: lowercase, typos, abbreviations, other wording",
}
# What each demo stage did, matched by substring in this order (stage names come from app/demo.py).
STAGES = (
    ("pull base model", "materialized the base small LM into a cached checkpoint (once per machine)"),
    ("train launch champion", "trained a LoRA adapter on launch data and registered it in MLflow as `champion`"),
    ("start serving tier", "started the embedded serving tier with the champion adapter loaded"),
    ("traffic: launch", "sent simulated launch traffic; hidden gold answers score live accuracy"),
    ("on launch traffic", "ran `nightly-retrain` on launch traffic: the drift tests should stay quiet"),
    ("traffic: drift", "sent drifted traffic while the launch champion served it"),
    ("traffic: after retrain", "sent more drifted traffic to whatever is champion now"),
    ("traffic: after rollback", "sent more drifted traffic after the rollback"),
    ("traffic: bad promotion", "sent drifted traffic while the bad version served it"),
    ("train a bad adapter", "trained a deliberately bad adapter on shuffled labels (registered as `challenger`)"),
    ("reviewer override", "a reviewer overrode the gate and promoted the bad version, pushed to every replica"),
    ("nightly-retrain", "drift tests → SIMULATED teacher labels → data contracts → LoRA retrain → promotion gate"),
    ("promote and push", "moved the `champion` alias to the candidate and pushed it to every replica, all or nothing"),
    ("bad", "promoted a deliberately bad version, to show the rollback guard at work"),
    ("rollback", "ran `rollback-guard`: the new champion against the previous one on live traffic"),
    ("cost ledger", "priced the run's records (traffic, teacher calls, training runs) against frontier-only"),
)


@dataclass(frozen=True)
class TrafficPhase:
    """One burst of simulated traffic and its live accuracy against the simulator's hidden gold:
    the small model's own answers, and what callers got with the router on."""

    phase: str  # "launch", "drift", "after retrain", "bad promotion", "after rollback"
    scenario: str
    requests: int
    live_accuracy: float | None  # the small model's own answers; None when no request had a gold answer
    served_by: str  # the route that served it, e.g. banking-intent@v2
    served_accuracy: float | None = None  # what callers got (the frontier's answer where the router used it)
    frontier_share: float | None = None  # share of answers the router had the frontier give


@dataclass(frozen=True)
class RollbackAct:
    """The demo's rollback act: the bad version promoted on purpose and what the guard restored."""

    bad_version: int
    restored_version: int
    reasons: list[str]
    completed: bool


@dataclass
class DemoReport:
    """What `flywheel demo` measured, filled in stage by stage; report.json is its `to_dict()`."""

    workload: str
    scenario: str
    fast: bool
    teacher: str = ""
    launch_drift_detected: bool = False  # the nightly run on launch traffic: should stay quiet
    drift_detected: bool = False
    drift_reason: str = ""
    champion_version: int | None = None
    candidate_version: int | None = None
    promoted_version: int | None = None
    gate_reasons: list[str] = field(default_factory=list)
    relabeled: int = 0
    teacher_cost: float = 0.0
    router_labels: int = 0  # labels the router's frontier gave during drift (free: the teacher was not asked)
    live_accuracy_launch: float | None = None
    live_accuracy_before: float | None = None
    live_accuracy_after: float | None = None
    champion_drift_accuracy: float | None = None
    candidate_drift_accuracy: float | None = None
    teacher_cached: int = 0
    to_review: int = 0
    live_accuracy_rollback: float | None = None  # on the bad version, before the guard acted
    live_accuracy_after_rollback: float | None = None
    # 95% interval of live_accuracy_after - live_accuracy_before (independent traffic samples)
    live_accuracy_gain_ci95: list[float] | None = None
    # The router (serving/router.py): share of answers the frontier gave, and the accuracy of what
    # callers got, during drift (before the retrain) and after the promotion.
    frontier_share_drift: float | None = None
    frontier_share_after: float | None = None
    served_accuracy_drift: float | None = None
    rollback_completed: bool = False
    rollback: RollbackAct | None = None  # None until the rollback act has run
    drift_tests: dict[str, list[DriftTest]] = field(default_factory=dict)  # "launch" and "drifted" nightly runs
    gate_metrics: dict[str, float] = field(default_factory=dict)  # the gate decision's metrics (none without a candidate)
    timeline: list[TrafficPhase] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    # The cost ledger of the demo's records (`models/costs.py`): totals, and the ledger itself.
    cost_usd: float | None = None
    frontier_only_cost_usd: float | None = None
    savings_pct: float | None = None
    costs: CostLedger | None = None
    home: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "costs": self.costs.to_dict() if self.costs else None}  # the ledger's derived totals too


@dataclass(frozen=True)
class Plot:
    name: str  # file stem under plots/
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str  # may carry `code` and **bold**


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class TableBlock:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Image:
    plot: Plot


Block = Heading | Paragraph | Bullets | TableBlock | Code | Image


def write_reports(report: DemoReport, out_dir: Path) -> dict[str, Path]:
    """Write `report.md` (PNGs under `out_dir/plots/`) and a self-contained `report.html`.

    Returns:
        The paths written: "markdown", "html", and one "plot:<name>" per plot.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = build_plots(report)
    written: dict[str, Path] = {}
    if plots:
        (out_dir / "plots").mkdir(exist_ok=True)
    for plot in plots:
        path = out_dir / "plots" / f"{plot.name}.png"
        path.write_bytes(plot.png)
        written[f"plot:{plot.name}"] = path
    blocks = build_blocks(report, plots)
    written["markdown"] = out_dir / "report.md"
    written["markdown"].write_text(to_markdown(blocks), encoding="utf-8")
    written["html"] = out_dir / "report.html"
    written["html"].write_text(to_html(blocks, _title(report)), encoding="utf-8")
    return written


def summary_table(report: DemoReport) -> Table:
    """The headline outcome, then seconds per stage: what `flywheel demo` prints last."""
    table = Table(title=_title(report))
    table.add_column("")
    table.add_column("value")
    for key, value in _headline(report):
        table.add_row(key, escape(value))
    for stage, seconds in report.stage_seconds.items():
        table.add_row(escape(f"seconds: {stage}"), _num(seconds, ".0f"))
    return table


# Formatting: every helper turns None into "n/a".


def _num(value: Any, spec: str = ".3f") -> str:
    return NA if value is None else format(value, spec)


def _yes(value: Any) -> str:
    return NA if value is None else ("yes" if value else "no")


def _version(value: Any) -> str:
    return NA if value is None else f"v{value}"


def _from_version(value: Any) -> str:
    return "none" if value is None else f"v{value}"  # a bootstrap has no previous champion


def _money(value: Any) -> str:
    return NA if value is None else f"${value:.2f}"


def _change(before: Any, after: Any) -> str:
    """Before → after with the margin in points, e.g. 0.270 → 0.500 (+23.0 points)."""
    if before is None or after is None:
        return f"{_num(before)} → {_num(after)}"
    return f"{before:.3f} → {after:.3f} ({100 * (after - before):+.1f} points)"


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def difference_ci95(before: float, n_before: int, after: float, n_after: int) -> tuple[float, float]:
    """95% interval for `after - before`, two independent proportions (Newcombe's hybrid score
    interval from Wilson intervals: sound at small n and near 0 or 1, unlike the Wald interval)."""
    z = 1.959964
    low1, high1 = _wilson(before, n_before, z)
    low2, high2 = _wilson(after, n_after, z)
    diff = after - before
    return diff - math.sqrt((after - low2) ** 2 + (high1 - before) ** 2), diff + math.sqrt((high2 - after) ** 2 + (before - low1) ** 2)


def _requests(report: DemoReport, phase: str) -> int | None:
    return next((p.requests for p in report.timeline if p.phase == phase), None)


def live_gain_ci95(report: DemoReport) -> tuple[float, float] | None:
    """The 95% interval of live accuracy after the retrain minus before, from the traffic counts."""
    before, after = report.live_accuracy_before, report.live_accuracy_after
    n_before, n_after = _requests(report, "drift"), _requests(report, "after retrain")
    if before is None or after is None or not n_before or not n_after:
        return None
    return difference_ci95(before, n_before, after, n_after)


def _live_change(report: DemoReport) -> str:
    """Before → after, the margin, and its 95% interval when the traffic counts are known."""
    text = _change(report.live_accuracy_before, report.live_accuracy_after)
    interval = live_gain_ci95(report)
    if interval is None:
        return text
    low, high = interval
    verdict = "a real gain" if low > 0 else "a real loss" if high < 0 else "within noise"
    return text[:-1] + f", 95% CI {100 * low:+.1f} to {100 * high:+.1f}: {verdict})"


def _title(report: DemoReport) -> str:
    fast = " (fast)" if report.fast else ""
    return f"slm-flywheel demo: {report.workload}, {report.scenario}{fast}"


def _total_seconds(report: DemoReport) -> float | None:
    return sum(report.stage_seconds.values()) if report.stage_seconds else None


def _rollback_summary(report: DemoReport) -> str:
    rollback = report.rollback
    if rollback is None:
        return NA
    return f"{_yes(rollback.completed)} ({_version(rollback.bad_version)} → {_version(rollback.restored_version)})"


def _teacher_summary(report: DemoReport) -> str:
    return (
        f"{report.relabeled} labels, simulated cost {_money(report.teacher_cost)} "
        f"({report.teacher_cached} from cache, {report.to_review} to human review); "
        f"{report.router_labels} more free from the router's frontier answers"
    )


def _headline(report: DemoReport) -> list[tuple[str, str]]:
    return [
        ("drift detected", f"{_yes(report.drift_detected)} (on launch traffic: {_yes(report.launch_drift_detected)})"),
        ("promoted version", _version(report.promoted_version)),
        ("live accuracy before → after", _live_change(report)),
        ("router: served accuracy during drift", _router_summary(report)),
        ("rollback completed", _rollback_summary(report)),
        ("teacher (SIMULATED)", _teacher_summary(report)),
        ("cost vs frontier-only", _cost_summary(report)),
        ("total seconds", _num(_total_seconds(report), ".0f")),
    ]


def _router_summary(report: DemoReport) -> str:
    if report.served_accuracy_drift is None:
        return NA
    return (
        f"{_num(report.served_accuracy_drift)} with the frontier answering {_share(report.frontier_share_drift)} "
        f"(the small model alone {_num(report.live_accuracy_before)}); after the retrain the frontier answers {_share(report.frontier_share_after)}"
    )


def _share(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.0f}%"


def _usd(value: Any) -> str:
    return NA if value is None else format_usd(value)


def _cost_summary(report: DemoReport) -> str:
    """The ledger's totals, and the volume they hold at: a demo day is a few thousand requests,
    where the fixed costs (serving, training) dwarf what a frontier API would charge, so the
    break-even volume says what the savings figure means."""
    if report.cost_usd is None:
        return NA
    text = f"{_usd(report.cost_usd)} vs {_usd(report.frontier_only_cost_usd)} (savings {_pct(report.savings_pct)})"
    ledger = report.costs
    if ledger is None or ledger.frontier_usd_per_request is None:
        return text
    text = f"{text} at {ledger.total.requests:,} requests"
    if ledger.break_even_requests_per_day is None:
        return f"{text}; never cheaper than frontier-only at these prices"
    return f"{text}; cheaper than frontier-only above {ledger.break_even_requests_per_day:,.0f} requests a day"


def _pct(value: float | None) -> str:
    return NA if value is None else f"{value:.1f}%"


COST_COLUMNS = (
    ("requests", "requests", str),
    ("frontier $", "frontier_usd", _usd),
    ("relabel $", "relabel_usd", _usd),
    ("serving $", "serving_usd", _usd),
    ("training $", "training_usd", _usd),
    ("cost $", "cost_usd", _usd),
    ("frontier-only $", "frontier_only_usd", _usd),
    ("savings %", "savings_pct", _pct),
)


def _cost_blocks(report: DemoReport, plot: Plot | None) -> list[Block]:
    """The cost ledger of the demo's traffic: per day, the total, the chart, the break-even volume."""
    ledger = report.costs
    blocks: list[Block] = [Heading("Costs")]
    if ledger is None:
        return blocks + [Paragraph(NA)]
    blocks.append(
        Paragraph(
            "What this run cost with the small model (frontier calls for relabelling and audits, the serving fleet's "
            "hours, the training runs), against **frontier-only**: every request sent to "
            f"`{ledger.frontier_model}` at the measured tokens (the workload's prompt and answer only, so a lower bound of the "
            "frontier's cost). Prices are the examples of `costs` in `flywheel.yaml`; the teacher's calls are "
            "SIMULATED and priced per label. From the records: `flywheel costs <workload>`."
        )
    )
    rows = [[line.period] + [render(getattr(line, key)) for _, key, render in COST_COLUMNS] for line in [*ledger.days, ledger.total]]
    blocks.append(TableBlock(["day", *(name for name, _, _ in COST_COLUMNS)], rows))
    total = ledger.total
    agreement = total.audited_agreement
    if agreement is not None:
        blocks.append(
            Paragraph(
                f"Served answers the teacher audited: {total.audited}, of which {agreement:.1%} agreed "
                "with the frontier's answer (the frontier scores 100% on its own answers): the savings come with this accuracy."
            )
        )
    per_request, break_even = ledger.frontier_usd_per_request, ledger.break_even_requests_per_day
    fixed = f"fixed costs {_usd(ledger.fixed_usd_per_day)} a day (serving share, training, relabelling, audits)"
    if per_request is None:
        blocks.append(Paragraph(f"**Break-even:** n/a (no requests); {fixed}."))
    elif break_even is None:
        blocks.append(Paragraph(f"**Break-even:** never at these prices; {fixed}."))
    else:
        blocks.append(
            Paragraph(
                f"**Break-even:** {break_even:,.0f} requests a day, at {_usd(per_request)} per frontier request and {fixed}; "
                "below that volume the frontier API is cheaper."
            )
        )
    if plot is not None:
        blocks.append(Image(plot))
    return blocks


# The report's text.


def _describe(stage: str) -> str:
    return next((text for needle, text in STAGES if needle in stage), "")


def _story(report: DemoReport) -> list[str]:
    """One numbered step per act of the demo, with this run's numbers."""
    scenario, before, reason = report.scenario, report.live_accuracy_before, report.drift_reason
    candidate, promoted, rollback = report.candidate_version, report.promoted_version, report.rollback
    steps: list[str] = []
    steps.append(
        f"**Launch.** Champion {_version(report.champion_version)} was trained on launch data (the items "
        f"that launch later are rare in it) and served; live accuracy on launch traffic: "
        f"{_num(report.live_accuracy_launch)}."
    )
    steps.append(
        f"**A quiet night.** `nightly-retrain` on launch traffic detected drift: "
        f"{_yes(report.launch_drift_detected)} (it should say no: this traffic looks like what the champion "
        "was trained on)."
    )
    steps.append(
        f"**Drift.** `{scenario}` traffic ({SCENARIOS.get(scenario, 'the configured scenario')}); live accuracy of "
        f"the launch champion: {_num(before)}."
    )
    steps.append(
        f"**Nightly retrain.** Drift detected: {_yes(report.drift_detected)}{f': {reason}' if reason else ''}. "
        f"The SIMULATED teacher produced {_teacher_summary(report)}; "
        + (f"candidate {_version(candidate)} was trained on them." if candidate is not None else "no candidate was trained.")
    )
    steps.append(
        "**Gate.** On the held-out drift slice (teacher labels never trained on), champion → candidate: "
        f"{_change(report.champion_drift_accuracy, report.candidate_drift_accuracy)}. "
        f"Decision: {'; '.join(report.gate_reasons) or NA}."
    )
    if promoted is not None:
        steps.append(f"**Promotion.** {_version(promoted)} became champion and was pushed to the serving tier.")
    else:
        steps.append("**Promotion.** Nothing was promoted: the champion kept serving.")
    steps.append(f"**After the retrain.** Live accuracy {_live_change(report)}.")
    if rollback is not None:
        steps.append(
            f"**Rollback act.** {_version(rollback.bad_version)} was promoted on purpose; the rollback guard "
            f"found: {'; '.join(rollback.reasons) or NA}. Restored {_version(rollback.restored_version)}, "
            f"completed: {_yes(rollback.completed)}. Live accuracy while the bad version "
            f"served: {_num(report.live_accuracy_rollback)}; after the rollback: "
            f"{_num(report.live_accuracy_after_rollback)}."
        )
    else:
        steps.append("**Rollback act.** n/a: not run in this demo.")
    return steps


def _table_or_na(header: list[str], rows: list[list[str]]) -> Block:
    return TableBlock(header, rows) if rows else Paragraph(NA)


def build_blocks(report: DemoReport, plots: list[Plot]) -> list[Block]:
    """The report's content, in reading order."""
    home = report.home or ".flywheel/demo"  # set once the demo has its state dir
    blocks: list[Block] = [
        Heading(_title(report), 1),
        Paragraph(
            "A fine-tuned small LM served production traffic, then the traffic drifted. The flywheel's nightly run "
            "checked for drift, bought teacher labels, retrained, and let a gate decide whether the candidate replaces "
            "the champion. Every number below comes from this run."
        ),
        Paragraph(
            f"**The teacher is a SIMULATED frontier model** (`{report.teacher}`). It answers from the traffic simulator's "
            "hidden gold with a controlled rate of plausible mistakes; no LLM API was called and its cost is simulated "
            "(a price per label), not billed. Set `teacher.kind: openai` in `flywheel.yaml` for a real one."
        ),
        Heading("Outcome"),
        TableBlock(["", "value"], [list(row) for row in _headline(report)]),
        Heading("What happened"),
        Bullets(_story(report)),
        Heading("Stages"),
        _table_or_na(
            ["stage", "seconds", "what it did"],
            [[stage, _num(seconds, ".1f"), _describe(stage)] for stage, seconds in report.stage_seconds.items()],
        ),
    ]
    for plot in plots:
        if plot.name != "costs":  # drawn in the cost section, beside its table
            blocks += [Heading(plot.title), Paragraph(plot.caption), Image(plot)]
    blocks += _cost_blocks(report, next((plot for plot in plots if plot.name == "costs"), None))
    blocks += [Heading("Registry history"), Paragraph("Every move of the `champion` alias, as recorded in the MLflow registry.")]
    blocks.append(
        _table_or_na(
            ["when", "who", "action", "from → to", "why"],
            [
                [entry.at, entry.actor, entry.action, f"{_from_version(entry.from_version)} → {_version(entry.to_version)}", entry.reason]
                for entry in report.history
            ],
        )
    )
    blocks += [
        Heading("See the same runs in the UIs"),
        Paragraph(
            "**MLflow** holds every training run, the gate's metrics and artifacts, and the registry with its aliases. "
            "Start its UI on the demo's store, then open http://127.0.0.1:5000:"
        ),
        Code(f".venv/bin/mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db"),
        Paragraph(
            "**Prefect** shows each flow run, its tasks, logs and the markdown artifacts (drift report, gate decision). "
            "Start a server, then open http://127.0.0.1:4200:"
        ),
        Code(".venv/bin/prefect server start"),
        Paragraph(
            "The demo ran its flows on an ephemeral Prefect API (a temporary server it started itself). To see a "
            "demo's runs in the UI as they happen, keep the server running and point the demo at it:"
        ),
        Code("PREFECT_API_URL=http://127.0.0.1:4200/api make demo"),
        Paragraph(f"The raw numbers of this report are in `{home}/report.json`."),
    ]
    return blocks


# Rendering.


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"{number}. {item}" for number, item in enumerate(block.items, start=1)] + [""]
        elif isinstance(block, TableBlock):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Code):
            lines += ["```bash", block.text, "```", ""]
        elif isinstance(block, Image):
            lines += [f"![{block.plot.title}](plots/{block.plot.name}.png)", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** (the only inline markup the blocks use)."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(https?://[^\s<]+[^\s<.,:;)])", r'<a href="\1">\1</a>', text)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code, pre { background: #f5f5f5; font-family: ui-monospace, monospace; }
pre { padding: 0.6rem; overflow-x: auto; }
img { max-width: 100%; }
"""


def to_html(blocks: list[Block], title: str) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    parts = [f'<!doctype html>\n<html lang="en"><head>{head}</head><body>']
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ol>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ol>")
        elif isinstance(block, TableBlock):
            header = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.plot.png).decode("ascii")
            parts.append(f"<img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(block.plot.title)}\">")
    parts.append("</body></html>")
    return "\n".join(parts)


# Plots: one small figure each, None when the report lacks what it needs.


def build_plots(report: DemoReport) -> list[Plot]:
    plots = [_drift_plot(report), _live_accuracy_plot(report), _teacher_plot(report), _gate_plot(report), _cost_plot(report)]
    return [plot for plot in plots if plot is not None]


def _figure(ncols: int = 1, width: float = 6.0) -> Any:
    # A bare Figure renders through the Agg canvas without pyplot's global state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.6), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _drift_plot(report: DemoReport) -> Plot | None:
    panels = [(label, report.drift_tests[key]) for key, label in DRIFT_RUNS if report.drift_tests.get(key)]  # a run the demo reached, with tests
    if not panels:
        return None
    from matplotlib.ticker import FuncFormatter

    fig, axes = _figure(len(panels), 5.5 * len(panels))
    for ax, (label, tests) in zip(axes, panels):
        # Effects live on different scales (MMD², JS distance, KS D, shares): their ratio to the threshold shares one.
        ratios = [t.effect / t.threshold if t.threshold > 0 else float(t.effect > 0) for t in tests]
        colors = ["tab:red" if t.drifted else "tab:orange" if t.significant else "tab:gray" for t in tests]
        bars = ax.barh([t.name for t in tests], ratios, color=colors)
        for bar, test in zip(bars, tests):
            # `DriftTest.p_value` is the Holm-corrected p
            note = f" {test.effect:.3g} vs {test.threshold:.3g}, p={test.p_value:.2g}"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, note, va="center", fontsize=7)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        # Linear up to the threshold, logarithmic past it: a 20x drift and a 0.2x quiet test fit one axis.
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, max(max(ratios), 1.0) * 30)  # room for the notes
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.invert_yaxis()
        ax.set_xlabel("effect ÷ threshold (log past 1)")
        drifted = any(t.drifted for t in tests)
        ax.set_title(f"{label}: {'DRIFT' if drifted else 'no drift'}", fontsize=10)
    return Plot(
        "drift",
        "Drift tests",
        "Each test's effect divided by its threshold (dashed line), with its p-value, for the nightly run on launch traffic and on drifted traffic. "
        "A test calls drift (red) only when its effect reaches the threshold and its Holm-corrected p-value is "
        "below alpha; orange is significant but too small to matter, gray is neither.",
        _png(fig),
    )


def _live_accuracy_plot(report: DemoReport) -> Plot | None:
    phases = [p for p in report.timeline if p.live_accuracy is not None]
    points = [(p.phase, p.live_accuracy, p.served_by) for p in phases]
    if not points:
        return None
    fig, (ax,) = _figure(width=7.0)
    xs = range(len(points))
    ax.plot(xs, [acc for _, acc, _ in points], marker="o", color="tab:blue", label="small model's own answers")
    for x, (_, acc, _) in zip(xs, points):
        ax.annotate(f"{acc:.3f}", (x, acc), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if any(p.served_accuracy is not None for p in phases):
        ax.plot(xs, [p.served_accuracy for p in phases], marker="s", color="tab:green", label="served answers (router on)")
        ax.plot(xs, [p.frontier_share for p in phases], marker="^", linestyle="--", color="tab:orange", label="frontier share")
        ax.legend(fontsize=7, loc="lower left")
    ax.set_xticks(list(xs), [f"{textwrap.fill(phase, 14)}\n{served_by}".strip() for phase, _, served_by in points], fontsize=7)
    ax.set_xmargin(0.08)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("phase of the demo, in order (and the version serving it)")
    ax.set_ylabel("live accuracy vs hidden gold")
    ax.set_title("Live accuracy over time", fontsize=10)
    return Plot(
        "live_accuracy",
        "Live accuracy over time",
        "Accuracy of the small model's own answers against the simulator's hidden gold, per traffic phase, with the "
        "version that served it; with the router on, also the accuracy of what callers got and the share the "
        "frontier (SIMULATED) answered: during drift the frontier takes more and served accuracy holds; after "
        "the retrain its share falls.",
        _png(fig),
    )


def _teacher_plot(report: DemoReport) -> Plot | None:
    if not report.relabeled:
        return None
    counts = {"labelled": report.relabeled, "of which cached": report.teacher_cached, "sent to human review": report.to_review}
    fig, (ax,) = _figure(width=5.0)
    bars = ax.bar(list(counts), list(counts.values()), color=["tab:blue", "tab:gray", "tab:orange"])
    ax.bar_label(bars, fontsize=8)
    ax.set_ylabel("samples")
    ax.set_title(f"SIMULATED teacher: simulated cost {_money(report.teacher_cost)}", fontsize=10)
    return Plot(
        "teacher",
        "Teacher labels",
        f"What the SIMULATED teacher labelled: {_teacher_summary(report)}. Cached answers cost nothing twice; "
        "a share of labels goes to the human review queue as spot checks.",
        _png(fig),
    )


def _gate_plot(report: DemoReport) -> Plot | None:
    # The gate decision's metrics: each model's headline on each split it was evaluated on (none without a candidate).
    values = {
        (model, split): report.gate_metrics.get(f"{model}_{split}_headline")
        for model in GATE_MODELS
        for split in ("golden", "drift")
    }
    if all(value is None for value in values.values()):
        return None
    fig, (ax,) = _figure(width=6.0)
    width = 0.38
    for offset, (split, label) in zip((-width / 2, width / 2), (("golden", "golden split"), ("drift", "drift slice"))):
        xs = [i + offset for i, model in enumerate(GATE_MODELS) if values[(model, split)] is not None]
        heights = [values[(model, split)] for model in GATE_MODELS if values[(model, split)] is not None]
        ax.bar_label(ax.bar(xs, heights, width, label=label), fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(GATE_MODELS)), GATE_MODELS)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("headline metric (accuracy / slot F1)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Promotion gate: base, champion, candidate", fontsize=10)
    return Plot(
        "gate",
        "The gate's comparison",
        "The same evaluation for the base model, the champion and the candidate, on the golden split and on the "
        "held-out drift slice. The candidate is promoted only if it beats the champion on the drift slice "
        f"(significantly) without regressing on golden. Decision: {'; '.join(report.gate_reasons) or NA}.",
        _png(fig),
    )


COST_PARTS = (("relabel_usd", "relabelling", "tab:orange"), ("audit_usd", "audits", "tab:red"), ("fallback_usd", "frontier fallbacks", "tab:purple"),
              ("serving_usd", "serving", "tab:blue"), ("training_usd", "training", "tab:green"))


def _cost_plot(report: DemoReport) -> Plot | None:
    if report.costs is None:
        return None
    total = report.costs.total
    fig, (ax,) = _figure(width=7.0)
    left = 0.0
    for key, label, color in COST_PARTS:
        value = getattr(total, key)
        if value > 0:
            ax.barh(["small model"], [value], left=[left], color=color, label=label)
            left += value
    ax.barh(["frontier-only"], [total.frontier_only_usd], color="tab:gray", label="frontier-only")
    for name, value in (("small model", total.cost_usd), ("frontier-only", total.frontier_only_usd)):
        ax.annotate(_usd(value), (value, name), textcoords="offset points", xytext=(4, 0), va="center", fontsize=8)
    ax.set_xlim(0, max(total.cost_usd, total.frontier_only_usd, 1e-9) * 1.25)  # room for the labels
    ax.set_xlabel("USD over the run")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Cost against frontier-only: savings {_pct(total.savings_pct)}", fontsize=10)
    return Plot(
        "costs",
        "Costs against frontier-only",
        "What the run cost with the small model, by part, and what the same requests would have cost on the frontier model.",
        _png(fig),
    )
