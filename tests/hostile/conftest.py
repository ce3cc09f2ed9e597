"""The hostile-input suite: its marker, one Consul agent for the module, and the counts printed at
the end of every run (CI logs show them whatever `-q` says)."""

from __future__ import annotations

from collections import Counter

import pytest

# What the suite generated, by verdict; printed by the terminal summary.
TALLY: Counter[str] = Counter()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hostile: property-based hostile values through Consul -> watcher -> haproxy.cfg (real processes)"
    )


def summary() -> str:
    t = TALLY
    return (f"hostile input: {t['generated']} values generated ({t['registrations']} registrations in "
            f"{t['batches']} batches): {t['accepted']} accepted by the grammar, {t['refused']} refused by the "
            f"grammar, {t['consul']} refused by Consul, {t['ignored']} ignored (meta, tags with no meaning); "
            f"{t['servers']} server lines and {t['routes']} routes rendered")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY["generated"]:
        terminalreporter.write_line(summary(), bold=True)
