"""Progress of long steps, shown by whoever is watching: a rich bar in the CLI, log lines elsewhere.

Tasks call `report(stage, done, total)`; the CLI installs a sink with `progress_bar()`. Without a
sink, progress is logged every 10% so a Prefect worker's logs still show it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Sink = Callable[[str, int, int], None]
_sink: Sink | None = None
_logged: dict[str, int] = {}
log = logging.getLogger("flywheel.progress")


def report(stage: str, done: int, total: int) -> None:
    if _sink is not None:
        _sink(stage, done, total)
        return
    decile = 10 * done // max(total, 1)
    if _logged.get(stage) != decile:
        _logged[stage] = decile
        log.info("%s: %d/%d", stage, done, total)


@contextmanager
def progress_bar() -> Iterator[None]:
    """Show every reported stage as a rich progress bar while the block runs."""
    global _sink
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bars: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:

        def sink(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total)
            progress.update(bars[stage], completed=done, total=total)

        previous, _sink = _sink, sink
        try:
            yield
        finally:
            _sink = previous
