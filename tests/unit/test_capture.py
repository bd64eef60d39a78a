"""The sample store: flush by count, by time and on close; date-range reads; overflow counted."""

import threading
import time
from datetime import date, datetime, timedelta, timezone

from slm_flywheel.serving.capture import Sample, SampleWriter, read_samples


def _sample(i, when, workload="banking-intent"):
    return Sample(when, f"r{i}", workload, f"text {i}", "card_arrival", True, 0.9, f"{workload}@v1", 5.0, "replica-x")


def test_flush_by_count_time_and_close_then_read_by_date(tmp_path):
    writer = SampleWriter(tmp_path, "replica-x", flush_records=3, flush_seconds=0.3)
    day1 = datetime(2026, 11, 27, 23, 59, tzinfo=timezone.utc)
    day2 = datetime(2026, 11, 28, 0, 1, tzinfo=timezone.utc)
    for i in range(3):
        writer.append(_sample(i, day1 + timedelta(seconds=i)))
    deadline = time.monotonic() + 5
    while writer.written < 3 and time.monotonic() < deadline:  # three records: a flush by count
        time.sleep(0.02)
    assert writer.written == 3
    writer.append(_sample(3, day2))
    deadline = time.monotonic() + 30
    while writer.written < 4 and time.monotonic() < deadline:  # one record: flushed by time, not by count
        time.sleep(0.02)
    assert writer.written == 4
    writer.append(_sample(4, day2 + timedelta(seconds=5), workload="restaurant-slots"))
    writer.close()  # the rest: flushed on shutdown
    assert writer.written == 5 and writer.dropped == 0
    assert sorted(p.parent.name for p in (tmp_path / "workload=banking-intent").glob("*/*.parquet")) == ["date=2026-11-27", "date=2026-11-28"]
    everything = read_samples(tmp_path, "banking-intent")
    assert list(everything["request_id"]) == ["r0", "r1", "r2", "r3"]
    assert list(read_samples(tmp_path, "banking-intent", start=date(2026, 11, 28))["request_id"]) == ["r3"]
    assert list(read_samples(tmp_path, "banking-intent", end=date(2026, 11, 28))["request_id"]) == ["r0", "r1", "r2"]
    assert list(read_samples(tmp_path, "banking-intent", start=day1 + timedelta(seconds=1), end=day2)["request_id"]) == ["r1", "r2"]
    assert list(read_samples(tmp_path, "restaurant-slots")["input"]) == ["text 4"]
    assert read_samples(tmp_path, "nothing").empty


class _StalledWriter(SampleWriter):
    """A writer whose disk is stuck until `gate` opens."""

    gate = threading.Event()

    def _run(self):
        self.gate.wait()
        super()._run()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    writer = _StalledWriter(tmp_path, "replica-x", max_queue=5, flush_records=10_000, flush_seconds=60)
    now = datetime(2026, 11, 28, tzinfo=timezone.utc)
    accepted = []
    appender = threading.Thread(target=lambda: accepted.extend(writer.append(_sample(i, now)) for i in range(2000)))
    appender.start()
    appender.join(timeout=60)  # a deadline, not a measure: appends that waited on the stuck writer never end
    assert not appender.is_alive(), "append blocked on a stuck writer"
    assert (sum(accepted), writer.dropped) == (5, 1995)
    _StalledWriter.gate.set()
    writer.close()
    assert writer.written == 5


def test_a_file_written_before_client_request_id_existed_is_read_not_quarantined(tmp_path):
    import pandas as pd

    from slm_flywheel.serving.capture import SCHEMA_FIELDS, scan_samples

    folder = tmp_path / "workload=w" / "date=2026-01-01"
    folder.mkdir(parents=True)
    old = {name: ["x"] for name in SCHEMA_FIELDS if name != "client_request_id"}
    old.update(timestamp=[pd.Timestamp("2026-01-01T10:00:00", tz="UTC")], valid=[True], confidence=[0.9], latency_ms=[3.0])
    pd.DataFrame(old).to_parquet(folder / "r0-old.parquet")
    scan = scan_samples(tmp_path, "w")
    assert scan.quarantined == []
    assert len(scan.frame) == 1 and scan.frame["client_request_id"].isna().all()
