"""The benchmark's table (with ratios and targets), its Markdown page and its latency plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

# (key, label), seconds; targets are judged in `targets()`, against the floor measured in the same run
LATENCIES = [
    ("consul_wake", "floor: Consul register → blocking query wakes"),
    ("runtime_set_server", "floor: HAProxy Runtime API `set server`"),
    ("runtime_add_enable", "floor: HAProxy `add server` + `enable server`"),
    ("passing_to_routable", "project: passing in Consul → first request served"),
    ("ready_to_routable", "project: ready → first request served"),
    ("deregister_to_last_request", "project: deregister → last request served"),
    ("kill_to_out_of_rotation", "project: kill -9 → out of rotation"),
    ("serf_join", "Serf (lab): join → first request served"),
    ("serf_leave", "Serf (lab): leave → last request served"),
    ("serf_crash", "Serf (lab): kill -9 → out of the config"),
]
SERF = {"serf_join", "serf_leave", "serf_crash"}
RATIOS = [
    ("Serf / project, join", "serf_join", "ready_to_routable", 20),
    ("Serf / project, leave", "serf_leave", "deregister_to_last_request", None),
    ("Serf / project, crash", "serf_crash", "kill_to_out_of_rotation", 50),
]
HOLD = 15.0  # the watcher's default --shrink-hold: the guarded row is judged against it
CONSUL_WAIT = 55.0  # the watcher's default blocking-query wait


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


def targets(samples: dict[str, list[float]]) -> dict[str, list[tuple[str, float, float]]]:
    """key -> [(which percentile, value, bound)]: the targets of ADR 0001 and issue 11, in seconds.
    passing → routable is bound by twice the floor measured in the same run (Consul's wake-up plus
    `add server` + `enable server`), at p50 and at p99 alike."""
    found: dict[str, list[tuple[str, float, float]]] = {}

    def p(key: str, q: float) -> float:
        return percentile(samples.get(key) or [], q)

    if samples.get("consul_wake") and samples.get("runtime_add_enable"):
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            floor = p("consul_wake", q) + p("runtime_add_enable", q)
            found.setdefault("passing_to_routable", []).append((name, p("passing_to_routable", q), 2 * floor))
    for key, bound in (("deregister_to_last_request", 0.030), ("ready_to_routable", 0.050),
                       ("kill_to_out_of_rotation", 0.050)):
        found[key] = [("p99", p(key, 0.99), bound)]
    return found


def _verdicts(checks: list[tuple[str, float, float]]) -> str:
    return "; ".join(f"{'met' if value <= bound else 'MISSED'} ({name} ≤ {_ms(bound)} ms)"
                     for name, value, bound in checks)


def renewals_bound(queries: int, idle: float, wait: float = CONSUL_WAIT) -> int:
    """The most requests a minute that blocking-query renewals alone can make: each of `queries`
    parked queries returns at most once every `wait` (Consul adds jitter, never less), so within
    `idle` seconds at most ⌈idle / wait⌉ times each."""
    return int(queries * -(-idle // wait) * 60 / idle)


def table(result: dict[str, Any]) -> str:
    samples: dict[str, list[float]] = result["samples"]
    judged = targets(samples)
    lines = ["| measure | n | p50 ms | p90 ms | p99 ms | max ms | target |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, label in LATENCIES:
        values = samples.get(key)
        if not values:
            continue
        lines.append(f"| {label} | {len(values)} | {_ms(percentile(values, 0.5))} | {_ms(percentile(values, 0.9))} "
                     f"| {_ms(percentile(values, 0.99))} | {_ms(max(values))} | {_verdicts(judged.get(key, []))} |")
    lines += ["", "| ratio of medians (same run) | value | target |", "|---|---:|---|"]
    if samples.get("passing_to_routable") and samples.get("consul_wake") and samples.get("runtime_add_enable"):
        floor = statistics.median(samples["consul_wake"]) + statistics.median(samples["runtime_add_enable"])
        ratio = statistics.median(samples["passing_to_routable"]) / floor
        lines.append(f"| project / floor (Consul wake + add server), join | {ratio:.1f}× | "
                     f"{'met' if ratio <= 2 else 'MISSED'} (≤ 2×) |")
    for label, top, bottom, target in RATIOS:
        if samples.get(top) and samples.get(bottom):
            ratio = statistics.median(samples[top]) / statistics.median(samples[bottom])
            verdict = "" if target is None else ("met" if ratio >= target else "MISSED") + f" (≥ {target}×)"
            lines.append(f"| {label} | {ratio:.1f}× | {verdict} |")
    held = samples.get("held_shrink_applied")
    if held:
        ok = all(HOLD <= v <= HOLD + 1 for v in held)
        lines += ["", "| guarded path (default guard: more than 50 % lost at once is held) | n | min s | max s "
                  "| target |", "|---|---:|---:|---:|---|",
                  f"| 3 of 4 instances lost at once → out of rotation | {len(held)} | {min(held):.2f} "
                  f"| {max(held):.2f} | {'met' if ok else 'MISSED'} (held {HOLD:g} s, applied within 1 s after) |"]
    figures = result["figures"]
    lines += ["", "| under load | events | requests | req/s | failed |", "|---|---:|---:|---:|---:|"]
    for key, label, count in (("load_scale_events", "scale-up/scale-down events", "events"),
                              ("load_forced_reloads", "forced full reloads", "reloads")):
        if key in figures:
            f = figures[key]
            lines.append(f"| {label} | {f[count]} | {f['requests']} | {f['rate']:.0f} | {f['failed']} |")
    if "scale" in figures:
        s = figures["scale"]
        one, outside = s["one_change_ms"], [v * 1000 for v in s["one_change_outside_s"]]
        bound = renewals_bound(s["blocking_queries"], s["idle_seconds"])
        idle = s["consul_requests_per_minute_idle"]
        lines += ["", "| 1,000 instances over 100 services | value | target |", "|---|---:|---|",
                  f"| full render + validate + apply (watcher's log) | {s['full_apply_ms']:.0f} ms | "
                  f"{'met' if s['full_apply_ms'] <= 1000 else 'MISSED'} (≤ 1 s) |",
                  f"| one instance change, p50 / p99 (watcher's log, n={len(one)}) | {percentile(one, 0.5):.1f} / "
                  f"{percentile(one, 0.99):.1f} ms | |",
                  f"| one instance change → first request served through HAProxy, p50 / p99 (n={len(outside)}) | "
                  f"{percentile(outside, 0.5):.1f} / {percentile(outside, 0.99):.1f} ms | |",
                  f"| watcher RSS | {s['watcher_rss_mib']:.0f} MiB | "
                  f"{'met' if s['watcher_rss_mib'] <= 300 else 'MISSED'} (≤ 300 MiB) |",
                  f"| Consul requests per minute, idle ({s['blocking_queries']} blocking queries, "
                  f"{s['idle_seconds']:g} s) | {idle:.0f} | "
                  f"{'blocking-query renewals only' if idle <= bound else 'MORE than renewals'} (≤ {bound}) |"]
    return "\n".join(lines)


def missing(result: dict[str, Any]) -> list[str]:
    """What a complete run must hold and this one does not: every row, every figure, each sample
    a real measurement (finite, not negative). The benchmark fails on any of them."""
    problems = []
    samples, figures = result["samples"], result["figures"]
    keys = [key for key, _ in LATENCIES if not (result.get("skip_serf") and key in SERF)] + ["held_shrink_applied"]
    for key in keys:
        values = samples.get(key) or []
        if not values:
            problems.append(f"no samples for {key}")
        elif not all(math.isfinite(v) and v >= 0 for v in values):
            problems.append(f"{key}: a sample is not a measurement")
    for key in ("load_scale_events", "load_forced_reloads", "scale"):
        if key not in figures:
            problems.append(f"no {key} figures")
    for key in ("load_scale_events", "load_forced_reloads"):
        if key in figures and not figures[key]["requests"]:
            problems.append(f"{key}: no request was sent")
    return problems


def markdown(result: dict[str, Any], table_text: str) -> str:
    return (f"# Benchmark results\n\n<!-- Generated by `bash bench/run` from bench/results/results.json; "
            f"do not edit by hand. -->\n\nMeasured {result['date']} at commit `{result['commit']}` on "
            f"{result['machine']}, by `bash bench/run` ({result['seconds']} s), with the watcher's default "
            f"settings. Raw samples: `bench/results/results.json`; distributions: "
            f"![latency](results/latency.png)\n\n{table_text}\n")


def plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(key, label) for key, label in LATENCIES if samples.get(key)]
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
