"""The production sample store: every prediction, appended to Parquet by one writer per replica.

Layout: `<root>/workload=<name>/date=<YYYY-MM-DD>/<replica>-<first timestamp>-<seq>.parquet`.
A writer thread drains a bounded queue and writes a file every `flush_records` records or
`flush_seconds` seconds, and on `close()`. Capture never blocks or fails a request: when the
queue is full the record is dropped and counted (`dropped`, exposed on /metrics). A crash (kill
-9, power loss) loses at most the records still in the queue, i.e. those since the last flush.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_FIELDS = ("timestamp", "request_id", "workload", "input", "answer", "valid", "confidence", "adapter_version", "latency_ms", "replica_id")


@dataclass(frozen=True)
class Sample:
    """One captured prediction. `answer` is the label, the slot JSON, or None when invalid."""

    timestamp: datetime
    request_id: str
    workload: str
    input: str
    answer: str | None
    valid: bool
    confidence: float
    adapter_version: str
    latency_ms: float
    replica_id: str


class SampleWriter:
    """Buffers samples in a bounded queue and writes them to Parquet from a background thread."""

    def __init__(self, root: Path, replica_id: str, *, max_queue: int = 10_000, flush_records: int = 500, flush_seconds: float = 5.0):
        self.root = root
        self.replica_id = replica_id
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[Sample | None] = queue.Queue(maxsize=max_queue)
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name=f"capture-{replica_id}", daemon=True)
        self._thread.start()

    def append(self, sample: Sample) -> bool:
        """Queue a sample without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(sample)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self, timeout: float = 30.0) -> None:
        """Write everything queued so far now (a reader that must see every sample calls this)."""
        done = threading.Event()
        self._queue.put(done)  # type: ignore[arg-type]  # an in-band marker, handled by _run
        done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued so far and stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        buffer: list[Sample] = []
        last_flush = time.monotonic()
        while True:
            wait = max(self.flush_seconds - (time.monotonic() - last_flush), 0.01)
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ...  # a timeout: flush what we have
            if item is None:
                self._flush(buffer)
                return
            if isinstance(item, threading.Event):
                self._flush(buffer)
                buffer = []
                last_flush = time.monotonic()
                item.set()
                continue
            if item is not ...:
                buffer.append(item)  # type: ignore[arg-type]
            if len(buffer) >= self.flush_records or (buffer and time.monotonic() - last_flush >= self.flush_seconds):
                self._flush(buffer)
                buffer = []
                last_flush = time.monotonic()

    def _flush(self, buffer: list[Sample]) -> None:
        if not buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        groups: dict[tuple[str, str], list[Sample]] = {}
        for sample in buffer:
            groups.setdefault((sample.workload, sample.timestamp.date().isoformat()), []).append(sample)
        for (workload, day), samples in groups.items():
            folder = self.root / f"workload={workload}" / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            stamp = samples[0].timestamp.strftime("%H%M%S%f")
            target = folder / f"{self.replica_id}-{stamp}-{self._seq:06d}.parquet"
            table = pa.Table.from_pylist([asdict(s) for s in samples])
            tmp = target.with_suffix(".parquet.tmp")
            pq.write_table(table, tmp)
            tmp.rename(target)  # readers never see a half-written file
        self.written += len(buffer)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def answer_to_text(answer: Any) -> str | None:
    if answer is None:
        return None
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


QUARANTINE_DIR = "_quarantine"  # under the store root: unreadable files and folders, moved aside
QUARANTINE_LOG = "quarantine.jsonl"  # in QUARANTINE_DIR: one line per move, with the reason


@dataclass(frozen=True)
class QuarantinedFile:
    """A file or folder of the sample store that could not be read, moved aside with the reason."""

    path: str  # where it was, relative to the store root
    moved_to: str  # where it is now, relative to the store root
    reason: str


@dataclass(frozen=True)
class SampleScan:
    """What one read of the store found: the rows, the files they came from, what was set aside."""

    frame: Any  # pandas, the SCHEMA_FIELDS columns (and any newer ones), sorted by timestamp
    files: list[str]  # the Parquet files read, relative to the store root
    quarantined: list[QuarantinedFile]


def _as_dt(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


def _quarantine(root: Path, path: Path, reason: str) -> QuarantinedFile | None:
    """Move `path` under `<root>/_quarantine/` (same relative path) and log why; None when another
    reader moved it first."""
    relative = path.relative_to(root)
    target = root / QUARANTINE_DIR / relative
    if target.exists():  # the same bad name again: keep both
        target = target.with_name(f"{target.name}.{time.time_ns()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.rename(target)
    except FileNotFoundError:
        return None
    record = QuarantinedFile(relative.as_posix(), target.relative_to(root).as_posix(), reason)
    with (root / QUARANTINE_DIR / QUARANTINE_LOG).open("a", encoding="utf-8") as log:
        log.write(json.dumps({**asdict(record), "at": now_utc().isoformat()}) + "\n")
    return record


def _folder_date(name: str) -> date | None:
    if not name.startswith("date="):
        return None
    try:
        return date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return None


def _read_file(path: Path) -> tuple[Any, str | None]:
    """(the file's rows, None) or (None, why it cannot be used)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except (OSError, ValueError, pa.ArrowException) as exc:
        return None, f"unreadable Parquet: {type(exc).__name__}: {str(exc)[:200]}"
    missing = [column for column in SCHEMA_FIELDS if column not in frame.columns]
    if missing:
        return None, f"missing columns: {', '.join(missing)}"
    if not pd.api.types.is_datetime64_any_dtype(frame["timestamp"]):
        return None, f"timestamp column is {frame['timestamp'].dtype}, not a timestamp"
    stamps = frame["timestamp"]
    # Writers store UTC; a zone-less column is read as UTC so that every file compares alike.
    frame["timestamp"] = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    return frame, None


def scan_samples(
    root: Path,
    workload: str,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    *,
    exclude: frozenset[str] = frozenset(),
) -> SampleScan:
    """Samples of `workload` with `start <= timestamp < end` (dates are whole UTC days), from the
    files not in `exclude` (paths relative to `root`).

    Nothing stops the read: a file that is not readable Parquet with the sample schema, a folder
    that is not `date=YYYY-MM-DD`, anything else where only date folders belong, is moved to
    `<root>/_quarantine/` (logged with the reason in its `quarantine.jsonl`) and returned in
    `quarantined`; the rest is read.
    """
    import pandas as pd

    columns = list(SCHEMA_FIELDS)
    quarantined: list[QuarantinedFile] = []

    def set_aside(path: Path, reason: str) -> None:
        record = _quarantine(root, path, reason)
        if record is not None:
            quarantined.append(record)

    folder = root / f"workload={workload}"
    days: list[tuple[date, Path]] = []
    if folder.exists() and not folder.is_dir():
        set_aside(folder, f"workload={workload} is a file, not a folder of date=YYYY-MM-DD folders")
    elif folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if not entry.is_dir():
                set_aside(entry, "a file where only date=YYYY-MM-DD folders belong")
                continue
            day = _folder_date(entry.name)
            if day is None:
                set_aside(entry, f"folder name {entry.name!r} is not date=YYYY-MM-DD")
            else:
                days.append((day, entry))
    frames, files = [], []
    for day, path in days:
        if start is not None and _as_dt(day) < _as_dt(start).replace(hour=0, minute=0, second=0, microsecond=0):
            continue
        if end is not None and _as_dt(day) >= _as_dt(end):
            continue
        for file in sorted(path.glob("*.parquet")):
            relative = file.relative_to(root).as_posix()
            if relative in exclude:
                continue
            frame, problem = _read_file(file)
            if problem:  # (a file another reader has just moved is skipped by `set_aside`)
                set_aside(file, problem)
                continue
            frames.append(frame)
            files.append(relative)
    if not frames:
        return SampleScan(pd.DataFrame(columns=columns), files, quarantined)
    frame = pd.concat(frames, ignore_index=True)
    if start is not None:
        frame = frame[frame["timestamp"] >= _as_dt(start)]
    if end is not None:
        frame = frame[frame["timestamp"] < _as_dt(end)]
    return SampleScan(frame.sort_values("timestamp", kind="stable").reset_index(drop=True), files, quarantined)


def read_samples(root: Path, workload: str, start: date | datetime | None = None, end: date | datetime | None = None) -> Any:
    """Samples of `workload` with `start <= timestamp < end`, as pandas; unreadable files and
    folders are quarantined (see `scan_samples`)."""
    return scan_samples(root, workload, start, end).frame
