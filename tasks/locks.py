"""Per-workload locks: two retrains, or two promotions, of one workload never run at once.

Prefect global concurrency limits with one slot, named `flywheel-<kind>-<workload>`. A flow takes
its workload's slot for the whole critical section; a second run waits for it (visible in the
Prefect UI under Concurrency). The limits are created on first use (and by `flywheel deploy`),
so the same code guards an ephemeral local API and a shared Prefect server.

Prefect takes the slots through one acquisition service per limit name and process, bound to the
API it first talked to: a process that moves to another API (a test suite does) stops those
services first (tests/conftest.py, `prefect_api`), or its locks would be taken on the old one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

Kind = Literal["retrain", "promote"]
KINDS: tuple[Kind, ...] = ("retrain", "promote")


def lock_name(kind: Kind, workload: str) -> str:
    return f"flywheel-{kind}-{workload}"


def ensure_locks(workloads: list[str]) -> list[str]:
    """Create (or reset to one slot) the limits of every workload; returns their names."""
    names = [lock_name(kind, workload) for workload in workloads for kind in KINDS]
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.upsert_global_concurrency_limit_by_name(name, 1)
            except ObjectAlreadyExists:  # another run created it between the upsert's read and its create
                client.upsert_global_concurrency_limit_by_name(name, 1)
    return names


@contextmanager
def workload_lock(kind: Kind, workload: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the workload's `kind` slot; waits while another run holds it."""
    name = lock_name(kind, workload)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            ensure_locks([workload])
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield
