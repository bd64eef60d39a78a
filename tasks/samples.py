"""Production samples for a run: every sample file no earlier run has used, under contract.

The watermark is by arrival, not by event time: it is the set of sample files the runs have used.
A replica that flushes late writes rows older than ones already read; a timestamp watermark would
skip them for good, the file set reads them the next night. Each file is read exactly once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from slm_flywheel.data_contracts.contracts import split_quarantine, validate_production_samples
from slm_flywheel.config import Settings
from slm_flywheel.files import atomic_write
from slm_flywheel.models.context import WorkloadContext
from slm_flywheel.serving.capture import QuarantinedFile, scan_samples


@dataclass(frozen=True)
class Watermark:
    """The sample files earlier runs have used (paths relative to the sample store)."""

    read: frozenset[str]
    legacy_since: datetime | None = None  # a watermark of the event-time era: rows after it are new


@dataclass(frozen=True)
class SampleWindow:
    """The valid samples of one run, the files they came from, and what was quarantined."""

    workload: str
    samples: pd.DataFrame
    quarantined: int  # rows that failed the contract
    quarantine_path: Path | None  # where those rows are, with the expectations they failed
    files: tuple[str, ...]  # the sample files read: advancing the watermark marks them used
    quarantined_files: tuple[QuarantinedFile, ...] = ()  # unreadable files and folders, moved aside


def _watermark_path(settings: Settings, workload: str) -> Path:
    return settings.state_dir / "watermarks" / f"{workload}.json"


def read_watermark(settings: Settings, workload: str) -> Watermark:
    path = _watermark_path(settings, workload)
    if not path.exists():
        return Watermark(frozenset())
    stored = json.loads(path.read_text())
    legacy = stored.get("watermark")
    return Watermark(frozenset(stored.get("read", [])), datetime.fromisoformat(legacy) if legacy else None)


def _quarantine_rows(settings: Settings, workload: str, bad: pd.DataFrame) -> Path:
    """Write the failing rows once: a window read again (drift-check, a carried-over night) finds
    its file already there."""
    folder = settings.state_dir / "quarantine" / workload
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join(f"{r}|{t}" for r, t in zip(bad["request_id"], bad["timestamp"])).encode()).hexdigest()[:16]
    path = folder / f"samples-{key}.parquet"
    if not path.exists():
        bad.to_parquet(path)
    return path


@task(cache_policy=NONE)  # reads the live sample store past the watermark
def load_new_samples(context: WorkloadContext) -> SampleWindow:
    """The samples of every file not used yet; rows failing the production contract, and files or
    folders that cannot be read, go to quarantine with the reason."""
    settings, workload, spec = context.settings, context.name, context.spec
    logger = get_run_logger()
    mark = read_watermark(settings, workload)
    scan = scan_samples(settings.samples_dir, workload, exclude=mark.read)
    for moved in scan.quarantined:
        logger.warning("%s: quarantined %s -> %s: %s", workload, moved.path, moved.moved_to, moved.reason)
    frame = scan.frame
    if mark.legacy_since is not None:
        frame = frame[frame["timestamp"] > mark.legacy_since].reset_index(drop=True)
    files, moved = tuple(scan.files), tuple(scan.quarantined)
    if not len(frame):
        logger.info("%s: no new samples (%d files used before)", workload, len(mark.read))
        return SampleWindow(workload, frame, 0, None, files, moved)
    result = validate_production_samples(frame, spec, settings.serving.max_text_chars)
    good, bad = split_quarantine(frame, result)
    quarantine_path = None
    if len(bad):
        quarantine_path = _quarantine_rows(settings, workload, bad)
        logger.warning("%s: %d samples quarantined (%s) -> %s", workload, len(bad), ", ".join(result.failed_expectations), quarantine_path)
    logger.info("%s: %d new samples (%d valid) from %d new files", workload, len(frame), len(good), len(files))
    return SampleWindow(workload, good.reset_index(drop=True), len(bad), quarantine_path, files, moved)


@task(cache_policy=NONE)  # side effect: moves the watermark
def advance_watermark(settings: Settings, window: SampleWindow) -> None:
    """Mark the window's files used (only called once the run has used them); files gone from
    the store are forgotten, since they cannot come back."""
    mark = read_watermark(settings, window.workload)
    read = {name for name in mark.read | set(window.files) if (settings.samples_dir / name).exists()}
    # A crash mid-write leaves the old watermark, never half of one.
    atomic_write(_watermark_path(settings, window.workload), json.dumps({"read": sorted(read)}))
