"""The fault matrix's results: what one run measured (build/faults/results.json, with the commit
and the machine) and the page made from it (tests/faults/RESULTS.md keeps one run's copy of both;
tests/unit/test_figures.py checks that the page is exactly what its results.json says)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests import provenance

COLUMNS = ("fault", "load", "failed", "recovery", "lost")

# The page around the table: where each case runs and the bounds it asserts (stated by the tests,
# not measured), with the run's own facts filled in.
PAGE = Path(__file__).with_name("page.md")


def results(rows: list[dict[str, str]], seconds: float) -> dict[str, Any]:
    return {"commit": provenance.commit(), "machine": provenance.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(seconds), "rows": rows}


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| fault | load | failed requests | recovery | lost registrations |", "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row[column] for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def page(result: dict[str, Any]) -> str:
    """RESULTS.md, made from one run's results.json alone."""
    return PAGE.read_text().format(date=result["date"], commit=result["commit"], machine=result["machine"],
                                   cases=len(result["rows"]), seconds=result["seconds"], table=table(result["rows"]))
