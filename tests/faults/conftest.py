"""The fault suite's summary: each case records one row; the table is printed at the end of the
run, and build/faults/results.json (with the commit and the machine) and build/faults/RESULTS.md
are written (tests/faults/ keeps one run's copy of both, see report.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import report

SECONDS = [0.0]  # the fault cases' own time (set-up, call, tear-down), whatever runs around them
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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/faults/"):
        SECONDS[0] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    rows = [dict(zip(report.COLUMNS, (r.fault, r.load, r.failed, r.recovery, r.lost), strict=True)) for r in ROWS]
    terminalreporter.section("fault matrix")
    terminalreporter.write_line(report.table(rows))
    result = report.results(rows, SECONDS[0])
    out = Path(__file__).resolve().parents[2] / "build" / "faults"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "RESULTS.md").write_text(report.page(result))
