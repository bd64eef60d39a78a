"""What the router's captured rows say: free training labels, and how honest the routing was.

Every captured row keeps the small model's own answer (`answer`, `confidence`) and, since the
router (`serving/router.py`), who answered the caller (`served_by`), with what (`served_answer`),
the calibrated confidence that decided it, the frontier's latency and cost, and for an audited
small-model answer the frontier's own (`audit_answer`). The router's frontier is the workload's
teacher, so its answers are teacher labels the nightly retrain gets for free:

* `router_label_rows`: the frontier's answers (served or audited) as id/text/label rows;
* `unlabelled_mask`: the window rows still worth buying a label for;
* `router_figures`: per UTC day and version, the frontier share, latency and spend, the
  wrong-path rate on the audited answers (with a Wilson 95% interval), and the label-free
  estimate of live accuracy (mean calibrated confidence of the answers the small model served)
  beside the audited agreement; `router_table` prints them.

Rows written before the router (no `served_by`) are neither labels nor routed traffic. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from slm_flywheel.models.workload import TaskSpec

# Who answered a caller (`served_by`, set by serving/router.py): the small model, the frontier, or
# the small model because the frontier could not (error, timeout, cap, breaker, rate limit).
SLM, FRONTIER, UNAVAILABLE = "slm", "frontier", "slm-frontier-unavailable"
ROUTER_SOURCE, TEACHER_SOURCE = "router", "teacher"  # a label's `source`: the router's frontier, or the teacher (and reviewers)
FALLBACK, AUDIT = "fallback", "audit"  # how the frontier came to answer: it served the caller, or checked the small model
CONFIDENCE_LEVEL = 0.95
LABEL_COLUMNS = ["id", "text", "label", "source", "kind"]


def _column(samples: pd.DataFrame, name: str) -> pd.Series:
    """A capture column, empty (None) for stores written before it existed."""
    return samples[name] if name in samples.columns else pd.Series([None] * len(samples), index=samples.index, dtype=object)


def router_label_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The frontier's answers in captured rows as labels (`LABEL_COLUMNS`, one per input text).

    A row served by the frontier gives its `served_answer` (kind `fallback`); a small-model row
    that was audited gives its `audit_answer` (kind `audit`). Texts asked more than once keep
    their first answer, so a text never comes with two labels. The answers are kept as captured
    (the teacher's own spelling: serving writes the frontier's label back as it parsed it) and
    are not validated here: the nightly retrain puts them under the teacher-label contract.
    """
    served_by, served, audit = _column(samples, "served_by"), _column(samples, "served_answer"), _column(samples, "audit_answer")
    fallback = (served_by == FRONTIER) & served.notna()
    audited = (served_by == SLM) & audit.notna()
    rows = pd.concat([
        pd.DataFrame({"id": samples["request_id"][fallback], "text": samples["input"][fallback], "answer": served[fallback], "kind": FALLBACK}),
        pd.DataFrame({"id": samples["request_id"][audited], "text": samples["input"][audited], "answer": audit[audited], "kind": AUDIT}),
    ]).sort_index(kind="stable")  # window order: the first answer of a text is the earliest
    rows = rows.drop_duplicates("text", keep="first")
    labels = pd.DataFrame({
        "id": rows["id"].astype(str), "text": rows["text"].astype(str),
        "label": rows["answer"].astype(str),
        "source": ROUTER_SOURCE, "kind": rows["kind"],
    }, columns=LABEL_COLUMNS)
    return labels.reset_index(drop=True)


def unlabelled_mask(samples: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """True for the rows whose request and text no label covers: only these may be sent to the
    teacher (a text the frontier already answered is never paid for twice)."""
    ids, texts = set(labels["id"].astype(str)), set(labels["text"].astype(str))
    return (~samples["request_id"].astype(str).isin(ids) & ~samples["input"].astype(str).isin(texts)).to_numpy()


def merge_labels(router: pd.DataFrame, teacher: pd.DataFrame) -> pd.DataFrame:
    """Router and teacher labels (id, text, label, source) as one set, one label per text: where
    both have a text (a reviewer's label from an earlier run), the teacher's side wins, since a
    person has seen it."""
    teacher = teacher.assign(source=teacher["source"] if "source" in teacher.columns else TEACHER_SOURCE)
    router = router[~router["text"].isin(set(teacher["text"]))]
    return pd.concat([teacher[["id", "text", "label", "source"]], router[["id", "text", "label", "source"]]], ignore_index=True)


@dataclass(frozen=True)
class RouterFigures:
    """The router on one UTC day for one version (`day` None: every day of the rows given)."""

    day: str | None
    version: str
    routed: int  # rows with a route (served_by set)
    frontier: int  # answered by the frontier
    unavailable: int  # sent to the frontier, which could not answer: the small model's answer, flagged
    frontier_share: float
    frontier_latency_ms: float | None  # mean over every frontier call the request path waited for
    frontier_spend_usd: float  # request-path calls (audits are paid off the path and not captured with a cost)
    audited: int  # small-model answers the frontier also answered
    wrong_path: int  # of them, where the small model's answer differs from the frontier's
    wrong_path_rate: float | None
    wrong_path_low: float | None  # Wilson 95% interval
    wrong_path_high: float | None
    slm_served: int
    label_free_accuracy: float | None  # mean calibrated confidence of the answers the small model served
    audited_agreement: float | None  # 1 - wrong_path_rate: what the label-free estimate should match


def _same(spec: TaskSpec, answer: Any, audit: Any) -> bool:
    """Extraction answers compare as slot dicts, so slot order does not matter."""
    if not isinstance(answer, str):
        return False
    try:
        return spec.parse_label(answer) == spec.parse_label(str(audit))
    except (json.JSONDecodeError, TypeError):
        return answer == audit


def wrong_path_rate(wrong: int, audited: int) -> tuple[float, float, float] | None:
    """`wrong` of `audited` small-model answers the frontier disagreed with: the rate and its
    Wilson 95% interval (None without an audit)."""
    if not audited:
        return None
    from scipy.stats import binomtest

    interval = binomtest(wrong, audited).proportion_ci(CONFIDENCE_LEVEL, method="wilson")
    return wrong / audited, float(interval.low), float(interval.high)


def _figures(rows: pd.DataFrame, spec: TaskSpec, day: str | None, version: str) -> RouterFigures:
    served_by = rows["served_by"]
    slm = rows[served_by == SLM]
    audited = slm[slm["audit_answer"].notna()]
    wrong = sum(not _same(spec, answer, audit) for answer, audit in zip(audited["answer"], audited["audit_answer"]))
    rate, low, high = wrong_path_rate(wrong, len(audited)) or (None, None, None)
    latency = pd.to_numeric(rows["frontier_latency_ms"], errors="coerce").dropna()
    calibrated = pd.to_numeric(slm["calibrated_confidence"], errors="coerce").dropna()
    frontier = int((served_by == FRONTIER).sum())
    return RouterFigures(
        day=day, version=version, routed=len(rows), frontier=frontier,
        unavailable=int((~served_by.isin([SLM, FRONTIER])).sum()),
        frontier_share=frontier / len(rows),
        frontier_latency_ms=float(latency.mean()) if len(latency) else None,
        frontier_spend_usd=float(pd.to_numeric(rows["frontier_cost_usd"], errors="coerce").fillna(0.0).sum()),
        audited=len(audited), wrong_path=wrong, wrong_path_rate=rate, wrong_path_low=low, wrong_path_high=high,
        slm_served=len(slm),
        label_free_accuracy=float(calibrated.mean()) if len(calibrated) else None,
        audited_agreement=None if rate is None else 1.0 - rate,
    )


def router_figures(samples: pd.DataFrame, spec: TaskSpec, *, by_day: bool = True) -> list[RouterFigures]:
    """The router's figures per (UTC day, version), or per version over all the rows (`by_day`
    False); rows without a route are left out, and so is a group without any."""
    routed = samples.assign(**{name: _column(samples, name) for name in ("served_by", "audit_answer", "calibrated_confidence", "frontier_latency_ms", "frontier_cost_usd")})
    routed = routed[routed["served_by"].notna()]
    if not len(routed):
        return []
    days = pd.to_datetime(routed["timestamp"], utc=True).dt.strftime("%Y-%m-%d") if by_day else pd.Series("", index=routed.index)
    groups = routed.groupby([days.rename("day"), routed["adapter_version"].astype(str).rename("version")], sort=True)
    return [_figures(rows, spec, day or None, version) for (day, version), rows in groups]


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def router_table(figures: list[RouterFigures]) -> str:
    """The figures as a markdown table."""
    lines = [
        "| day | version | routed | frontier share | unavailable | frontier latency (ms) | frontier spend ($) | audited | wrong-path rate (95% CI) | label-free accuracy | audited agreement |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        wrong = "n/a" if f.wrong_path_rate is None else f"{f.wrong_path_rate:.3f} [{f.wrong_path_low:.3f}, {f.wrong_path_high:.3f}] ({f.wrong_path}/{f.audited})"
        lines.append(
            f"| {f.day or 'all'} | {f.version} | {f.routed} | {f.frontier_share:.3f} | {f.unavailable} | {_number(f.frontier_latency_ms, '.1f')} | "
            f"{f.frontier_spend_usd:.4f} | {f.audited} | {wrong} | {_number(f.label_free_accuracy, '.3f')} | {_number(f.audited_agreement, '.3f')} |"
        )
    return "\n".join(lines)
