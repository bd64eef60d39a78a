"""Append-only records of what the frontier was asked: one JSON line per paid call, one per audit.

The cost ledger (`models/costs.py`) is derived from these records and from the sample store and
MLflow, never from a running counter: a record is written when the call is paid, so the ledger
and the provider's bill count the same calls. Files live under `<state>/usage/`:

* `<workload>.jsonl`: one `UsageRecord` per call the teacher paid for (cache hits are free and
  are not written), with the purpose it was made for (`relabel` or `audit`).
* `<workload>.audits.jsonl`: one `AuditRecord` per rollback-guard audit (how many served answers
  the teacher checked and how many it agreed with), the served model's measured accuracy
  against the frontier's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, TypeVar

Purpose = Literal["relabel", "audit"]
PURPOSES: tuple[str, ...] = ("relabel", "audit")
# The simulated teacher's calls: priced per item (`teacher.simulated_price_per_item`), no tokens.
SIMULATED_MODEL = "simulated"


class UsageLogError(ValueError):
    """A usage or audit log line cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class UsageRecord:
    """One call paid to a frontier model.

    `estimated` is true when the provider reported no usage and the call was charged its worst
    case (the prompt bound and `max_tokens`), exactly as the teacher charged it.
    """

    at: datetime
    workload: str
    purpose: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    items: int
    estimated: bool = False


@dataclass(frozen=True)
class AuditRecord:
    """One audit: `agreed` of `audited` served answers equal the teacher's answer."""

    at: datetime
    workload: str
    version: int
    audited: int
    agreed: int


def usage_path(state_dir: Path, workload: str) -> Path:
    return state_dir / "usage" / f"{workload}.jsonl"


def audit_path(state_dir: Path, workload: str) -> Path:
    return state_dir / "usage" / f"{workload}.audits.jsonl"


def _append(path: Path, record: UsageRecord | AuditRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({**asdict(record), "at": record.at.isoformat()}, ensure_ascii=False) + "\n"
    # One write on an O_APPEND descriptor: concurrent writers (two flows, two processes) never
    # interleave within a line this short.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class UsageLog:
    """Where one teacher writes its paid calls, and what it is calling for."""

    path: Path
    workload: str
    purpose: Purpose

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")

    def record(self, model: str, prompt_tokens: int, completion_tokens: int, items: int, *, estimated: bool = False) -> UsageRecord:
        """Append one paid call; returns the record written."""
        record = UsageRecord(datetime.now(timezone.utc), self.workload, self.purpose, model, prompt_tokens, completion_tokens, items, estimated)
        _append(self.path, record)
        return record


def record_audit(path: Path, workload: str, version: int, audited: int, agreed: int) -> AuditRecord:
    """Append one audit's outcome; returns the record written."""
    record = AuditRecord(datetime.now(timezone.utc), workload, version, audited, agreed)
    _append(path, record)
    return record


def _lines(path: Path) -> list[tuple[int, dict]]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            row["at"] = datetime.fromisoformat(row["at"])
        except (ValueError, KeyError, TypeError) as error:
            raise UsageLogError(f"{path}:{number}: unreadable record ({error}): {line[:120]!r}") from error
        rows.append((number, row))
    return rows


_Record = TypeVar("_Record", UsageRecord, AuditRecord)


def _records(path: Path, record: type[_Record], what: str) -> list[_Record]:
    records = []
    for number, row in _lines(path):
        try:
            records.append(record(**row))
        except TypeError as error:
            raise UsageLogError(f"{path}:{number}: not {what} ({error})") from error
    return records


def read_usage(path: Path) -> list[UsageRecord]:
    """Every paid call in a usage log, in the order written (an absent file holds none)."""
    return _records(path, UsageRecord, "a usage record")


def read_audits(path: Path) -> list[AuditRecord]:
    """Every audit in an audit log, in the order written (an absent file holds none)."""
    return _records(path, AuditRecord, "an audit record")
