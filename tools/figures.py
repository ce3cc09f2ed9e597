"""Figures quoted in the documents, written from the benchmark's results and never by hand.

    python -m tools.figures            rewrite every marked figure from bench/results/results.json
    python -m tools.figures --check    exit 1 when one differs

A quoted figure carries a marker right after it: `17.4 ms<!--bench:passing_to_routable:p50-->`.
A verdict word carries one too: `missed<!--bench:verdict:passing_to_routable:p50-->` is `met` or
`missed` as `bench/report.py` judges that target in the same results. The number keeps the digits
it is written with; `tests/unit/test_figures.py` fails when a document and the results differ, so a
swapped median or a hand-edited figure cannot land.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "results.json"
DOCUMENTS = [ROOT / "README.md", ROOT / "REPORT.md", *sorted((ROOT / "ADR").glob("*.md")),
             *sorted((ROOT / "docs").glob("*.md"))]
UNIT = r"(?:\s?(?:ms|s|\u00d7|MiB|req/s))?"  # ms, s, times, MiB, req/s
FIGURE = re.compile(r"(?P<number>\d[\d,]*(?:\.\d+)?)(?P<unit>" + UNIT + r")\s?"
                    r"<!--\s*bench:(?P<key>[\w.]+):(?P<stat>\w+)\s*-->")
VERDICT = re.compile(r"(?P<word>met|missed)<!--\s*bench:verdict:(?P<key>\w+):(?P<stat>p50|p99)\s*-->")
COMMIT = re.compile(r"`(?P<commit>[0-9a-f]{12})`<!--\s*bench:commit\s*-->")


def value(result: dict[str, Any], key: str, stat: str) -> float:
    """A figure of the results by name: a latency's p50/p90/p99/max in ms, its min_s/max_s in
    seconds, a ratio of medians (`top.bottom:ratio`), a scalar of the figures
    (`scale.100x10:full_apply_ms`), or a percentile of samples among them
    (`scale.1x10000.one_change_outside_s:p99`, in ms; `traces.kill_to_out_of_rotation.seen:p50`,
    a phase of the per-sample traces, in ms)."""
    samples: dict[str, list[float]] = result["samples"]
    if key in samples and stat in ("p50", "p90", "p99"):
        return report.percentile(samples[key], int(stat[1:]) / 100) * 1000
    if key in samples and stat == "max":
        return max(samples[key]) * 1000
    if key in samples and stat in ("min_s", "max_s"):
        return (min if stat == "min_s" else max)(samples[key])
    if stat == "ratio":
        top, bottom = key.split(".")
        return statistics.median(samples[top]) / statistics.median(samples[bottom])
    found: Any = result["figures"]
    for part in key.split("."):
        # a phase of per-sample traces (`traces.passing_to_routable.seen`): its values, one a sample
        found = [sample[part] for sample in found] if isinstance(found, list) else found[part]
    if isinstance(found, list) and stat in ("p50", "p90", "p99"):
        # samples among the figures: `..._s` lists hold seconds, quoted in ms like the latencies
        figure = report.percentile(found, int(stat[1:]) / 100)
        return figure * 1000 if key.endswith("_s") else figure
    figure = found[stat] if isinstance(found, dict) else found
    if isinstance(figure, list):
        raise KeyError(f"{key}:{stat} is a list of samples: quote a percentile of it")
    return float(figure)


def verdict(result: dict[str, Any], key: str, stat: str) -> str:
    checks = {name: (measured, bound) for name, measured, bound in report.targets(result["samples"]).get(key, [])}
    measured, bound = checks[stat]
    return "met" if measured <= bound else "missed"


def written(number: str, figure: float) -> str:
    """`figure` with the digits `number` is written with (and its thousands separators)."""
    digits = len(number.replace(",", "").partition(".")[2])
    return f"{figure:,.{digits}f}" if "," in number else f"{figure:.{digits}f}"


def rewrite(text: str, result: dict[str, Any]) -> str:
    text = FIGURE.sub(lambda m: written(m["number"], value(result, m["key"], m["stat"])) + m[0][len(m["number"]):],
                      text)
    text = VERDICT.sub(lambda m: verdict(result, m["key"], m["stat"]) + m[0][len(m["word"]):], text)
    return COMMIT.sub(lambda m: f"`{result['commit'][:12]}`" + m[0][len(m["commit"]) + 2:], text)


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    result = json.loads(RESULTS.read_text())
    stale = []
    for document in DOCUMENTS:
        text = document.read_text()
        try:
            new = rewrite(text, result)
        except (KeyError, ValueError) as error:
            print(f"{document.relative_to(ROOT)} quotes a figure {RESULTS.relative_to(ROOT)} does not have: {error}",
                  file=sys.stderr)
            return 1
        if new != text:
            stale.append(document.relative_to(ROOT).as_posix())
            if not check:
                document.write_text(new)
    if check and stale:
        print(f"figures differ from {RESULTS.relative_to(ROOT)} in: {', '.join(stale)} (run python -m tools.figures)",
              file=sys.stderr)
        return 1
    print(f"{'checked' if check else 'rewrote'} figures in {len(DOCUMENTS)} documents"
          + (f"; changed: {', '.join(stale)}" if stale and not check else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
