"""The fault-injection suite: each test drives one fault against real components and records a row
(fault, requests sent, answered, captured, quarantined, lost); the table prints at the end of the run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class FaultRow:
    fault: str
    sent: int
    answered: int
    captured: int
    quarantined: int
    lost: int


_ROWS: list[FaultRow] = []


class FaultTable:
    """What one fault test saw; `lost` is what was neither captured nor quarantined with a reason."""

    def record(self, fault: str, *, sent: int, answered: int, captured: int, quarantined: int = 0, lost: int) -> FaultRow:
        row = FaultRow(fault, sent, answered, captured, quarantined, lost)
        _ROWS.append(row)
        return row


@pytest.fixture
def fault_table() -> FaultTable:
    return FaultTable()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ROWS:
        return
    header = ("fault", "sent", "answered", "captured", "quarantined", "lost")
    rows = [header] + [(r.fault, str(r.sent), str(r.answered), str(r.captured), str(r.quarantined), str(r.lost)) for r in _ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    terminalreporter.section("fault injection")
    for row in rows:
        terminalreporter.write_line("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
