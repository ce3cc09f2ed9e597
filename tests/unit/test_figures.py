"""Every published figure is produced by a measurement that records its commit and machine.

- bench/RESULTS.md is exactly what bench/results/results.json makes (row by row, value by value);
- tests/faults/RESULTS.md is exactly what tests/faults/results.json (one run of the suite) makes;
- a figure quoted elsewhere (README, REPORT, ADRs, docs) carries a marker naming what it quotes
  and equals that value of today's results as written (`tools/figures.py`), so a swapped median
  or a hand-edited figure fails here; so do a verdict word and the commit quoted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import report
from tests.faults import report as faults_report
from tools import figures

ROOT = Path(__file__).resolve().parents[2]
BENCH = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
FAULTS = json.loads((ROOT / "tests" / "faults" / "results.json").read_text())


def test_bench_results_record_commit_machine_and_a_full_run():
    assert re.fullmatch(r"[0-9a-f]{40}", BENCH["commit"]), "measured on uncommitted code"
    assert BENCH["machine"] and not BENCH["quick"] and not BENCH["skip_serf"]
    assert report.missing(BENCH) == []


def test_bench_results_page_is_made_from_its_results():
    assert (ROOT / "bench" / "RESULTS.md").read_text() == report.markdown(BENCH, report.table(BENCH))


@pytest.mark.parametrize("document", figures.DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_quoted_figure_verdict_and_commit_is_todays(document):
    text = document.read_text()
    assert figures.rewrite(text, BENCH) == text, f"{document.name}: run python -m tools.figures"


def test_the_report_and_the_records_quote_todays_benchmark():
    quoted = {p.name: len(figures.FIGURE.findall(p.read_text())) for p in figures.DOCUMENTS}
    assert quoted["REPORT.md"] >= 10
    assert sum(quoted.values()) >= 20
    assert f"`{BENCH['commit'][:12]}`<!--bench:commit-->" in (ROOT / "REPORT.md").read_text()


def test_a_swapped_or_hand_edited_figure_is_caught():
    p50, p99 = (figures.value(BENCH, "passing_to_routable", s) for s in ("p50", "p99"))
    right = f"{p50:.1f} ms<!--bench:passing_to_routable:p50--> and {p99:.1f} ms<!--bench:passing_to_routable:p99-->"
    swapped = f"{p99:.1f} ms<!--bench:passing_to_routable:p50--> and {p50:.1f} ms<!--bench:passing_to_routable:p99-->"
    assert figures.rewrite(right, BENCH) == right
    assert figures.rewrite(swapped, BENCH) != swapped
    word = figures.verdict(BENCH, "kill_to_out_of_rotation", "p99")
    wrong = ("met" if word == "missed" else "missed") + "<!--bench:verdict:kill_to_out_of_rotation:p99-->"
    assert figures.rewrite(wrong, BENCH) != wrong


def test_fault_results_record_commit_machine_and_every_case():
    assert re.fullmatch(r"[0-9a-f]{40}", FAULTS["commit"]), "measured on uncommitted code"
    assert FAULTS["machine"] and len(FAULTS["rows"]) >= 18
    assert all(set(row) == set(faults_report.COLUMNS) for row in FAULTS["rows"])


def test_fault_results_page_is_made_from_its_results():
    assert (ROOT / "tests" / "faults" / "RESULTS.md").read_text() == faults_report.page(FAULTS)
