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
    ("runtime_first_request", "floor: HAProxy `add server` → first request served (round robin over 4, same probe)"),
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
SCALE_SHAPES = ("100x10", "1x10000", "500x20")  # bench.scale.SHAPES, each a table of its own
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


# The phases of a trace (bench.project.trace), in the order they happen. The first spans
# everything before the watcher hears of the change: for ready → routable and kill → out of
# rotation, Docker's event, the registrator and Consul; for passing → routable, Consul alone.
PHASES = [
    ("consul_answered", "until Consul's answer reaches the watcher (for a container: Docker, the registrator, Consul)"),
    ("taken", "the apply loop takes the snapshot"),
    ("decided", "desired state + shrink guard"),
    ("locked", "apply lock"),
    ("rendered", "plan + render"),
    ("written", "file written (data fsync, rename)"),
    ("haproxy", "Runtime API: add server + enable health + enable server, or drain"),
    ("seen", "until we see it: the first request it serves, or HAProxy's state leaving UP"),
]
TRACED = ("passing_to_routable", "ready_to_routable", "kill_to_out_of_rotation")


def trace_table(row: str, traces: list[dict[str, float]]) -> list[str]:
    """Where a row's time goes: each phase's percentiles over its per-sample traces (ms)."""
    if not traces:
        return []
    label = dict(LATENCIES)[row].removeprefix("project: ")
    lines = ["", f"| {label}: per-sample traces (n={len(traces)}), phase | p50 ms | p90 ms | p99 ms |",
             "|---|---:|---:|---:|"]
    for key, phase in PHASES:
        values = [t[key] / 1000 for t in traces if key in t]
        lines.append(f"| {phase} | {_ms(percentile(values, 0.5))} | {_ms(percentile(values, 0.9))} "
                     f"| {_ms(percentile(values, 0.99))} |")
    return lines


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
    if samples.get("passing_to_routable") and samples.get("consul_wake") and samples.get("runtime_first_request"):
        floor = statistics.median(samples["consul_wake"]) + statistics.median(samples["runtime_first_request"])
        ratio = statistics.median(samples["passing_to_routable"]) / floor
        lines.append(f"| project / floor with the probe's round robin (Consul wake + add server → first request), "
                     f"join | {ratio:.1f}× | |")
    for label, top, bottom, target in RATIOS:
        if samples.get(top) and samples.get(bottom):
            ratio = statistics.median(samples[top]) / statistics.median(samples[bottom])
            verdict = "" if target is None else ("met" if ratio >= target else "MISSED") + f" (≥ {target}×)"
            lines.append(f"| {label} | {ratio:.1f}× | {verdict} |")
    for row in TRACED:
        lines += trace_table(row, (result["figures"].get("traces") or {}).get(row) or [])
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
    if "balance" in figures:
        b = figures["balance"]
        even = b["never_used"] == 0 and b["fewest"] == b["most"] and b["servers_listed"] == b["servers"]
        lines += ["", f"| one backend of {b['servers']:,} servers, `balance {b['algorithm']}` | value | target |",
                  "|---|---:|---|",
                  f"| requests sent / answered 200 | {b['requests']:,} / {b['answered']:,} | |",
                  f"| servers never used | {b['never_used']:,} | {_met(even)} (every server, evenly) |",
                  f"| requests per server, fewest / most | {b['fewest']} / {b['most']} | |"]
    single_p99 = percentile(samples.get("passing_to_routable") or [], 0.99) * 1000
    for shape, s in (figures.get("scale") or {}).items():
        lines += scale_table(shape, s, single_p99)
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def scale_table(shape: str, s: dict[str, Any], single_p99_ms: float) -> list[str]:
    """One shape of `bench.scale`: its targets judged here, one change against twice the p99 of
    passing → routable measured in the same run on a small service."""
    one, outside = s["one_change_ms"], [v * 1000 for v in s["one_change_outside_s"]]
    traces = s["one_change_outside_traces"]
    bound = renewals_bound(s["blocking_queries"], s["idle_seconds"])
    idle = s["consul_requests_per_minute_idle"]
    title = f"{s['instances']:,} instances in {s['services']:,} service{'s' if s['services'] > 1 else ''}"
    return ["", f"| {title} ({shape}) | value | target |", "|---|---:|---|",
            f"| full render + validate + apply (watcher's log) | {s['full_apply_ms']:.0f} ms | "
            f"{_met(s['full_apply_ms'] <= 1000)} (≤ 1 s) |",
            f"| HAProxy's own `haproxy -c` of that config (floor, median of 3) | {s['haproxy_check_ms']:.0f} ms | |",
            f"| Consul's answer listing one whole service, {s['instances'] // s['services']:,} instances (floor, "
            f"median of 3) | {s['consul_answer_ms']:.0f} ms | |",
            f"| one instance change, p50 / p99 (watcher's log, n={len(one)}) | {percentile(one, 0.5):.1f} / "
            f"{percentile(one, 0.99):.1f} ms | |",
            f"| one instance change → first request served through HAProxy, p50 / p99 (n={len(outside)}) | "
            f"{percentile(outside, 0.5):.1f} / {percentile(outside, 0.99):.1f} ms | "
            f"{_met(percentile(outside, 0.99) <= 2 * single_p99_ms)} (p99 ≤ 2 × passing → routable p99 = "
            f"{2 * single_p99_ms:.1f} ms) |",
            *[f"| … of which {label} (p50 of the traces) | {_ms(percentile([t[key] / 1000 for t in traces], 0.5))} ms "
              f"| |" for key, label in PHASES if key in ("consul_answered", "decided", "rendered", "haproxy")],
            f"| watcher RSS | {s['watcher_rss_mib']:.0f} MiB | {_met(s['watcher_rss_mib'] <= 300)} (≤ 300 MiB) |",
            f"| Consul requests per minute, idle ({s['blocking_queries']} blocking queries, "
            f"{s['idle_seconds']:g} s) | {idle:.0f} | "
            f"{'blocking-query renewals only' if idle <= bound else 'MORE than renewals'} (≤ {bound}) |"]


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
    for row in TRACED:
        if samples.get(row) and len((figures.get("traces") or {}).get(row) or []) != len(samples[row]):
            problems.append(f"{row}: not every sample has its trace")
    for key in ("load_scale_events", "load_forced_reloads", "balance"):
        if key not in figures:
            problems.append(f"no {key} figures")
    for shape in SCALE_SHAPES:
        if shape not in (figures.get("scale") or {}):
            problems.append(f"no scale figures for {shape}")
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
