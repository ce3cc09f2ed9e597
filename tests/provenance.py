"""Where a measurement comes from: the commit measured and the machine, recorded in every results
file (bench/results/results.json, build/faults/results.json) so that a published figure can be
traced to the code it describes."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("discovery", "demo", "images", "compose.yaml", "consul", "bench", "tests",
            # what the measurements write is not what they measure
            ":!bench/results", ":!bench/RESULTS.md", ":!tests/faults/results.json", ":!tests/faults/RESULTS.md")


def commit() -> str:
    """HEAD, with `+changes` when the measured code differs from it (such results are not published)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *MEASURED], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def machine() -> str:
    """Host name, CPU model, cores, memory and OS."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory = next((int(line.split()[1]) / 1024 / 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0.0)
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}"
