"""Production samples for a run: everything since the workload's watermark, under contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from data_contracts.contracts import split_quarantine, validate_production_samples
from flywheel.config import Settings
from models.workload import TaskSpec
from serving.capture import read_samples


@dataclass(frozen=True)
class SampleWindow:
    """The valid samples of one run, where the quarantined ones went, and the window's end."""

    workload: str
    samples: pd.DataFrame
    quarantined: int
    quarantine_path: Path | None
    since: datetime | None
    until: datetime | None  # the newest sample's timestamp: the next watermark


def _watermark_path(settings: Settings, workload: str) -> Path:
    return settings.state_dir / "watermarks" / f"{workload}.json"


def read_watermark(settings: Settings, workload: str) -> datetime | None:
    path = _watermark_path(settings, workload)
    if not path.exists():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["watermark"])


@task(cache_policy=NONE)
def load_new_samples(settings: Settings, workload: str, spec: TaskSpec) -> SampleWindow:
    """Samples since the watermark; rows failing the production contract go to quarantine."""
    since = read_watermark(settings, workload)
    frame = read_samples(settings.samples_dir, workload, start=since)
    if since is not None and len(frame):
        frame = frame[frame["timestamp"] > since].reset_index(drop=True)
    logger = get_run_logger()
    if not len(frame):
        logger.info("%s: no new samples since %s", workload, since)
        return SampleWindow(workload, frame, 0, None, since, since)
    result = validate_production_samples(frame, spec, settings.serving.max_text_chars)
    good, bad = split_quarantine(frame, result)
    quarantine_path = None
    if len(bad):
        folder = settings.state_dir / "quarantine" / workload
        folder.mkdir(parents=True, exist_ok=True)
        quarantine_path = folder / f"samples-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.parquet"
        bad.to_parquet(quarantine_path)
        logger.warning("%s: %d samples quarantined (%s) -> %s", workload, len(bad), ", ".join(result.failed_expectations), quarantine_path)
    until = frame["timestamp"].max().to_pydatetime()
    logger.info("%s: %d new samples (%d valid) since %s", workload, len(frame), len(good), since)
    return SampleWindow(workload, good.reset_index(drop=True), len(bad), quarantine_path, since, until)


@task(cache_policy=NONE)
def advance_watermark(settings: Settings, window: SampleWindow) -> None:
    """The next run starts after this window (only called once the run has used it)."""
    if window.until is None:
        return
    path = _watermark_path(settings, window.workload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"watermark": window.until.isoformat()}))
