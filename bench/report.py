"""The benchmark's table (with ratios and targets), its Markdown page and its latency plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# (key, label, target for p50, target for p99), seconds
LATENCIES = [
    ("consul_wake", "floor: Consul register → blocking query wakes", None, None),
    ("runtime_set_server", "floor: HAProxy Runtime API `set server`", None, None),
    ("runtime_add_enable", "floor: HAProxy `add server` + `enable server`", None, None),
    ("passing_to_routable", "project: passing in Consul → first request served", 0.020, 0.050),
    ("ready_to_routable", "project: ready → first request served", None, 0.250),
    ("deregister_to_last_request", "project: deregister → last request served", None, None),
    ("kill_to_out_of_rotation", "project: kill -9 → out of rotation", None, 0.100),
    ("serf_join", "Serf (lab): join → first request served", None, None),
    ("serf_leave", "Serf (lab): leave → last request served", None, None),
    ("serf_crash", "Serf (lab): kill -9 → out of the config", None, None),
]
RATIOS = [
    ("project / floor, join", "passing_to_routable", "consul_wake", None),
    ("Serf / project, join", "serf_join", "ready_to_routable", 20),
    ("Serf / project, leave", "serf_leave", "deregister_to_last_request", None),
    ("Serf / project, crash", "serf_crash", "kill_to_out_of_rotation", 50),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def _ms(seconds: float) -> str:
    digits = 2 if seconds < 0.01 else 1 if seconds < 1 else 0
    return f"{seconds * 1000:.{digits}f}"


def _verdict(value: float, target: float | None, lower_is_better: bool = True) -> str:
    if target is None:
        return ""
    ok = value <= target if lower_is_better else value >= target
    return ("met" if ok else "MISSED") + f" (target {'≤' if lower_is_better else '≥'} {target * 1000:g} ms)"


def table(result: dict[str, Any]) -> str:
    samples: dict[str, list[float]] = result["samples"]
    lines = ["| measure | n | p50 ms | p90 ms | p99 ms | max ms | target |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, label, p50_target, p99_target in LATENCIES:
        values = samples.get(key)
        if not values:
            continue
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        verdicts = "; ".join(v for v in (_verdict(p50, p50_target).replace("target", "p50 target"),
                                         _verdict(p99, p99_target).replace("target", "p99 target")) if v)
        lines.append(f"| {label} | {len(values)} | {_ms(p50)} | {_ms(percentile(values, 0.9))} | {_ms(p99)} "
                     f"| {_ms(max(values))} | {verdicts} |")
    lines += ["", "| ratio of medians | value | target |", "|---|---:|---|"]
    for label, top, bottom, target in RATIOS:
        if samples.get(top) and samples.get(bottom):
            ratio = statistics.median(samples[top]) / statistics.median(samples[bottom])
            verdict = "" if target is None else ("met" if ratio >= target else "MISSED") + f" (≥ {target}×)"
            lines.append(f"| {label} | {ratio:.1f}× | {verdict} |")
    figures = result["figures"]
    lines += ["", "| under load | events | requests | req/s | failed |", "|---|---:|---:|---:|---:|"]
    for key, label, count in (("load_scale_events", "scale-up/scale-down events", "events"),
                              ("load_forced_reloads", "forced full reloads", "reloads")):
        if key in figures:
            f = figures[key]
            lines.append(f"| {label} | {f[count]} | {f['requests']} | {f['rate']:.0f} | {f['failed']} |")
    if "scale" in figures:
        s = figures["scale"]
        one = s["one_change_ms"]
        lines += ["", "| 1,000 instances over 100 services | value | target |", "|---|---:|---|",
                  f"| full render + validate + apply | {s['full_apply_ms']:.0f} ms | "
                  f"{'met' if s['full_apply_ms'] <= 500 else 'MISSED'} (≤ 500 ms) |",
                  f"| one instance change, p50 / p99 (n={len(one)}) | {percentile(one, 0.5):.1f} / "
                  f"{percentile(one, 0.99):.1f} ms | {'met' if percentile(one, 0.5) <= 20 else 'MISSED'} (≤ 20 ms) |",
                  f"| watcher RSS | {s['watcher_rss_mib']:.0f} MiB | |",
                  f"| Consul requests per minute, idle ({s['blocking_queries']} blocking queries) | "
                  f"{s['consul_requests_per_minute_idle']:.0f} | blocking-query renewals only |"]
    return "\n".join(lines)


def markdown(result: dict[str, Any], table_text: str) -> str:
    return (f"# Benchmark results\n\nMeasured {result['date']} on {result['machine']}, by `bash bench/run` "
            f"({result['seconds']} s). Raw samples: `bench/results/results.json`; distributions: "
            f"![latency](results/latency.png)\n\n{table_text}\n")


def plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(key, label) for key, label, _, _ in LATENCIES if samples.get(key)]
    figure, axis = plt.subplots(figsize=(11, 0.55 * len(keys) + 1.5))
    axis.boxplot([[v * 1000 for v in samples[key]] for key, _ in keys], vert=False, whis=(1, 99),
                 showfliers=False)
    axis.set_yticks(range(1, len(keys) + 1), [label for _, label in keys], fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("milliseconds (log scale); boxes p25–p75, whiskers p1–p99")
    axis.invert_yaxis()
    axis.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
