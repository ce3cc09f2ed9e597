"""The benchmark cannot rot unnoticed: CI runs its smoke run (`bash bench/run --quick`) on today's
code, and fails when it errors or leaves a row out. Its figures are not judged here (a quick run on
a shared machine is too noisy for a p99); the full run, `bash bench/run`, is judged in RESULTS.md."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_the_quick_benchmark_runs_on_todays_code_and_fills_every_row(tmp_path):
    run = subprocess.run(["bash", "bench/run", "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert report.missing(result) == []
    assert result["quick"] and result["commit"]
    for key, _ in report.LATENCIES:
        assert len(result["samples"][key]) >= 3, key
    assert result["figures"]["load_scale_events"]["requests"] > 1000
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    print(report.table(result))
