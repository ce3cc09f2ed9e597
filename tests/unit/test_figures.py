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


def test_what_the_documents_conclude_from_the_figures_holds_in_todays_results():
    """Prose built on figures (REPORT's "Honest limits", ADR 0012) checked against them, so that a
    new run that turns a conclusion around fails here instead of leaving it standing."""
    def p(key, stat="p50"):
        return figures.value(BENCH, key, stat)

    # REPORT: round robin and the probe alone, over Consul's wake-up, already exceed twice the
    # floor the passing → routable target names: no watcher could meet it as measured.
    for stat in ("p50", "p99"):
        assert p("consul_wake", stat) + p("runtime_first_request", stat) > \
            2 * (p("consul_wake", stat) + p("runtime_add_enable", stat)), stat
    # ADR 0012: every one of 10,000 servers used, evenly.
    balance = BENCH["figures"]["balance"]
    assert balance["servers"] == 10_000 and balance["never_used"] == 0 and balance["fewest"] == balance["most"]
    # ... at 1 x 10,000, HAProxy's two parses of a full apply are over the 1 s by themselves, and
    # Consul's answer is most of one change; at 500 x 20 the watcher's own pass is.
    assert 2 * BENCH["figures"]["scale"]["1x10000"]["haproxy_check_ms"] > 1000
    assert p("traces.passing_to_routable.seen") > 0  # the phase exists and is measured
    assert p("scale.1x10000.one_change_outside_traces.consul_answered") > p("scale.1x10000.one_change_outside_s") / 2
    ours = p("scale.500x20.one_change_outside_traces.decided") + p("scale.500x20.one_change_outside_traces.rendered")
    assert ours > p("scale.500x20.one_change_outside_s") / 2
    # ADR 0008's addendum and REPORT: most of kill → out of rotation passes before the watcher hears.
    assert p("traces.kill_to_out_of_rotation.consul_answered") > p("kill_to_out_of_rotation") / 2
