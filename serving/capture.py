"""The production sample store: every prediction, appended to Parquet by one writer per replica.

Layout: `<root>/workload=<name>/date=<YYYY-MM-DD>/<replica>-<first timestamp>-<seq>.parquet`.
A writer thread drains a bounded queue and writes a file every `flush_records` records or
`flush_seconds` seconds, and on `close()`. Capture never blocks or fails a request: when the
queue is full the record is dropped and counted (`dropped`, exposed on /metrics and /health).

A write that fails (disk full, read-only or vanished mount) is retried with backoff; if it still
fails, the rows go to a JSON-lines spill file beside the store (`<root>-spill/`), which the writer
moves into the store after its next successful write (and at start, for a previous run's spill).
Only if the spill cannot be written either are the rows kept in memory for the next flush (up to
`max_queue` of them; beyond that the oldest are dropped and counted). `close()` waits at most its
timeout. A crash (kill -9, power loss) loses at most the records still in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from slm_flywheel.files import atomic_write

log = logging.getLogger("flywheel.capture")

SCHEMA_FIELDS = (
    "timestamp", "request_id", "workload", "input", "answer", "valid", "confidence", "adapter_version", "latency_ms", "replica_id", "client_request_id",
    "served_by", "served_answer", "route_reason", "calibrated_confidence", "frontier_latency_ms", "frontier_tokens", "frontier_cost_usd", "audit_answer",
)
# Added after stores existed: older files lack them (read as empty).
LATER_FIELDS = (
    "client_request_id", "served_by", "served_answer", "route_reason", "calibrated_confidence", "frontier_latency_ms", "frontier_tokens", "frontier_cost_usd", "audit_answer",
)


@dataclass(frozen=True)
class Sample:
    """One captured prediction. `answer` is the label, the slot JSON, or None when invalid.

    `request_id` is made by the server (unique); `client_request_id` is the caller's
    `x-request-id`, kept as given (files written before it existed lack the column).

    `answer`, `valid` and `confidence` are always the small model's own (what drift and the
    rollback guard read); what the caller got is `served_answer`, answered by `served_by`
    (slm, frontier, slm-frontier-unavailable; serving/router.py) for `route_reason`. A frontier
    answer is a free label for the nightly retrain."""

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
    client_request_id: str | None = None
    served_by: str | None = None
    served_answer: str | None = None
    route_reason: str | None = None
    calibrated_confidence: float | None = None
    frontier_latency_ms: float | None = None
    frontier_tokens: int | None = None
    frontier_cost_usd: float | None = None
    audit_answer: str | None = None  # the frontier's answer to an audited small-model answer


def _arrow_schema() -> Any:
    """Fixed column types, so a batch where every `client_request_id` is None still writes strings."""
    import pyarrow as pa

    types = {
        "timestamp": pa.timestamp("us", tz="UTC"), "valid": pa.bool_(), "confidence": pa.float64(), "latency_ms": pa.float64(),
        "calibrated_confidence": pa.float64(), "frontier_latency_ms": pa.float64(), "frontier_tokens": pa.int64(), "frontier_cost_usd": pa.float64(),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in SCHEMA_FIELDS])


@dataclass(frozen=True)
class CaptureStats:
    """What the writer has done since it started (the counters /metrics and /health expose)."""

    written: int  # rows in the store
    dropped: int  # rows lost: the queue was full, or the store, the spill and memory all were
    write_failures: int  # failed write attempts (each retry counts)
    spilled: int  # rows written to the spill file because the store failed
    recovered: int  # spilled rows since moved into the store
    retained: int  # rows held in memory because the spill failed too
    last_error: str | None  # the last write error, None once a write succeeds again

    @property
    def healthy(self) -> bool:
        return self.last_error is None and self.retained == 0


class SampleWriter:
    """Buffers samples in a bounded queue and writes them to Parquet from a background thread."""

    def __init__(
        self,
        root: Path,
        replica_id: str,
        *,
        max_queue: int = 10_000,
        flush_records: int = 500,
        flush_seconds: float = 5.0,
        spill_dir: Path | None = None,
        write_attempts: int = 3,
        retry_backoff_s: float = 0.1,
    ):
        self.root = root
        self.replica_id = replica_id
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.spill_dir = spill_dir or root.parent / f"{root.name}-spill"
        self.write_attempts = write_attempts
        self.retry_backoff_s = retry_backoff_s
        self.max_retained = max_queue
        self.dropped = 0
        self.written = 0
        self.write_failures = 0
        self.spilled = 0
        self.recovered = 0
        self.last_error: str | None = None
        self._retained: list[Sample] = []
        self._queue: queue.Queue[Sample | threading.Event | None] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
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

    def stats(self) -> CaptureStats:
        return CaptureStats(self.written, self.dropped, self.write_failures, self.spilled, self.recovered, len(self._retained), self.last_error)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued so far now (a reader that must see every sample calls this);
        False when that did not finish within `timeout`."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)  # an in-band marker, handled by _run
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Flush everything queued so far and stop the writer, waiting at most `timeout` seconds;
        False (and logged) when the writer had not finished by then."""
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the writer drains the full queue, then sees `_stop`
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.error("capture writer %s did not finish within %.0f s; %d queued rows not written", self.replica_id, timeout, self._queue.qsize())
            return False
        return True

    def _run(self) -> None:
        self._recover_spills()  # a previous run's spill, if the store is writable now
        buffer: list[Sample] = []
        last_flush = time.monotonic()
        while True:
            wait = max(self.flush_seconds - (time.monotonic() - last_flush), 0.01)
            if self._stop.is_set():
                wait = min(wait, 0.05)  # closing: only what is already queued is still to come
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None if self._stop.is_set() else ...  # a timeout: flush what we have
            if item is None:
                self._flush(buffer + self._drain())
                if self._retained:  # the store and the spill both failed at close: say so, count them
                    log.error("capture writer %s closed with %d rows neither written nor spilled", self.replica_id, len(self._retained))
                    self.dropped += len(self._retained)
                    self._retained = []
                return
            if isinstance(item, threading.Event):
                self._flush(buffer)
                buffer = []
                last_flush = time.monotonic()
                item.set()
                continue
            if item is not ...:
                buffer.append(item)
            due = (buffer or self._retained) and time.monotonic() - last_flush >= self.flush_seconds
            if len(buffer) >= self.flush_records or due:
                self._flush(buffer)
                buffer = []
                last_flush = time.monotonic()

    def _drain(self) -> list[Sample]:
        """What is still queued at close (markers are released, not written)."""
        rows: list[Sample] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rows
            if isinstance(item, threading.Event):
                item.set()
            elif item is not None:
                rows.append(item)

    def _flush(self, buffer: list[Sample]) -> None:
        rows, self._retained = self._retained + buffer, []
        if not rows:
            return
        failed = [sample for group in _by_partition(rows) if not self._write_with_retries(group) for sample in group]
        if not failed:
            self.last_error = None
            self._recover_spills()
            return
        try:
            self._spill(failed)
        except Exception as exc:  # the spill's disk failed too: keep the rows for the next flush
            log.error("capture spill to %s failed too (%s); holding %d rows in memory", self.spill_dir, exc, len(failed))
            overflow = max(len(failed) - self.max_retained, 0)
            self.dropped += overflow
            self._retained = failed[overflow:]

    def _write_with_retries(self, samples: list[Sample]) -> bool:
        for attempt in range(self.write_attempts):
            try:
                self._write(samples)
                return True
            except Exception as exc:  # any write error: the rows must survive it
                self.write_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("capture write failed (attempt %d of %d): %s", attempt + 1, self.write_attempts, self.last_error)
                if attempt + 1 < self.write_attempts:
                    time.sleep(self.retry_backoff_s * 2**attempt)
        return False

    def _write(self, samples: list[Sample]) -> None:
        """One Parquet file for samples of one workload and day."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = samples[0]
        folder = self.root / f"workload={first.workload}" / f"date={first.timestamp.date().isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        target = folder / f"{self.replica_id}-{first.timestamp.strftime('%H%M%S%f')}-{self._seq:06d}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        try:
            pq.write_table(pa.Table.from_pylist([asdict(s) for s in samples], schema=_arrow_schema()), tmp)
            tmp.rename(target)  # readers never see a half-written file
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self.written += len(samples)

    def _spill(self, samples: list[Sample]) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        target = self.spill_dir / f"{self.replica_id}-{time.time_ns()}-{self._seq:06d}.jsonl"
        atomic_write(target, _spill_lines(samples))
        self.spilled += len(samples)
        log.warning("capture: %d rows spilled to %s", len(samples), target)

    def _recover_spills(self) -> None:
        """Move this replica's spill files into the store; stop at the first that still fails."""
        for path in sorted(self.spill_dir.glob(f"{self.replica_id}-*.jsonl")):
            try:
                samples = read_spill(path)
            except (OSError, ValueError, TypeError, KeyError) as exc:  # left in place, named, for an operator
                log.error("capture: cannot read spill file %s (%s); left in place", path, exc)
                continue
            left = [sample for group in _by_partition(samples) if not self._write_once(group) for sample in group]
            try:
                if left:
                    _rewrite_spill(path, left)  # what was written is not written twice
                    return
                path.unlink()
            except OSError as exc:  # the spill's disk failed under us: try again after the next write
                log.error("capture: cannot update spill file %s (%s)", path, exc)
                return
            self.recovered += len(samples)
            log.info("capture: recovered %d spilled rows from %s", len(samples), path)

    def _write_once(self, samples: list[Sample]) -> bool:
        try:
            self._write(samples)
            return True
        except Exception as exc:
            self.write_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False


def _by_partition(samples: list[Sample]) -> list[list[Sample]]:
    groups: dict[tuple[str, date], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.workload, sample.timestamp.date()), []).append(sample)
    return list(groups.values())


def read_spill(path: Path) -> list[Sample]:
    """The samples of one spill file (JSON lines of `Sample`)."""
    names = {f.name for f in fields(Sample)}
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = {key: value for key, value in json.loads(line).items() if key in names}
        samples.append(Sample(**{**row, "timestamp": datetime.fromisoformat(row["timestamp"])}))
    return samples


def _spill_lines(samples: list[Sample]) -> str:
    return "".join(json.dumps({**asdict(s), "timestamp": s.timestamp.isoformat()}, ensure_ascii=False) + "\n" for s in samples)


def _rewrite_spill(path: Path, samples: list[Sample]) -> None:
    atomic_write(path, _spill_lines(samples))


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
    missing = [column for column in SCHEMA_FIELDS if column not in frame.columns and column not in LATER_FIELDS]
    if missing:
        return None, f"missing columns: {', '.join(missing)}"
    for column in LATER_FIELDS:  # a file written before the column existed is still a good file
        if column not in frame.columns:
            frame[column] = None
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
