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


def read_samples(root: Path, workload: str, start: date | datetime | None = None, end: date | datetime | None = None) -> Any:
    """Samples of `workload` with `start <= timestamp < end` (dates are whole UTC days), as pandas."""
    import pandas as pd

    folder = root / f"workload={workload}"
    files = sorted(folder.glob("date=*/*.parquet")) if folder.exists() else []
    columns = list(SCHEMA_FIELDS)
    if not files:
        return pd.DataFrame(columns=columns)

    def as_dt(value: date | datetime) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)

    keep = []
    for path in files:
        day = date.fromisoformat(path.parent.name.removeprefix("date="))
        if start is not None and as_dt(day) < as_dt(start).replace(hour=0, minute=0, second=0, microsecond=0):
            continue
        if end is not None and as_dt(day) >= as_dt(end):
            continue
        keep.append(path)
    if not keep:
        return pd.DataFrame(columns=columns)
    frame = pd.concat([pd.read_parquet(path) for path in keep], ignore_index=True)
    if start is not None:
        frame = frame[frame["timestamp"] >= as_dt(start)]
    if end is not None:
        frame = frame[frame["timestamp"] < as_dt(end)]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
