"""The fault suite's summary: each case records one row; the table is printed at the end of the
run and written to build/faults-results.md (tests/faults/RESULTS.md keeps a copy from a run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROWS: list[FaultRow] = []


@dataclass(frozen=True)
class FaultRow:
    fault: str
    load: str
    failed: str
    recovery: str
    lost: str


@pytest.fixture
def record() -> Callable[..., None]:
    """record(fault, load, failed, recovery, lost): one row of the matrix."""
    return lambda *cells: ROWS.append(FaultRow(*cells))


def table() -> str:
    lines = ["| fault | load | failed requests | recovery | lost registrations |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r.fault} | {r.load} | {r.failed} | {r.recovery} | {r.lost} |" for r in ROWS]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    terminalreporter.section("fault matrix")
    terminalreporter.write_line(table())
    out = Path(__file__).resolve().parents[2] / "build" / "faults-results.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table() + "\n")
