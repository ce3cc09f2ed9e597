"""The benchmark: the physical floor, this project and the lab's Serf design, in one run.

    bash bench/run [--quick]        (sets itself up; see docs/operations.md)

Prints a table, writes bench/results/results.json and bench/results/latency.png, and rewrites
bench/RESULTS.md with the table, the commit measured, the date and the machine. `--quick` is a
smoke run (CI runs it): few samples, written to bench/results/quick/ only, never quoted. Either
way the run fails (exit 1) when a row is missing or a measurement could not be taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from bench import balance, floor, load, project, report, scale
from tests import provenance
from tests.processes import WebApps, consul_dev, watcher_process
from tests.support import require

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HOLD = 15.0  # the watcher's default --shrink-hold


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def summary(samples: dict[str, list[float]]) -> None:
    for key, values in samples.items():
        log(f"  {key}: n={len(values)} p50={report.percentile(values, 0.5) * 1000:.1f} ms "
            f"p99={report.percentile(values, 0.99) * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, not for RESULTS.md)")
    parser.add_argument("--skip-serf", action="store_true", help="leave out the Serf baseline")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.json and latency.png go (default bench/results, or bench/results/quick)")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    n = 20 if args.quick else 200
    for binary in ("consul", "haproxy", "docker") + (() if args.skip_serf else ("serf",)):
        require(binary)
    commit = provenance.commit()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    samples: dict[str, list[float]] = {}
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        # Consul as shipped (consul/server.json): 4,096 connections per client, not 200 — the
        # watcher holds one blocking query (one connection) per opted-in service.
        agent = stack.enter_context(consul_dev(workdir, "-hcl", "limits { http_max_conns_per_client = 4096 }"))
        apps = WebApps()
        stack.callback(apps.stop_all)
        log(f"[bench] floor ({n} samples each)")
        samples |= floor.measure_floor(agent.client, workdir, n, apps)
        summary(samples)

        # This watcher stops before the scale shapes, whose own watcher must be the only load on
        # the machine. It runs with the defaults users get (coalescing, shrink guard, reload cap).
        with watcher_process(workdir, agent.address, *scale.DEFAULTS, name="bench-watch") as watcher:
            log(f"[bench] project: passing → routable, deregister → last request ({n} each, "
                f"services of {project.BASE + 1} instances)")
            found, traces = project.passing_and_deregister(agent.client, watcher, apps, n, log)
            summary(found)
            samples |= found
            figures["traces"] = {"passing_to_routable": traces}

            rounds = 1 if args.quick else 3
            log(f"[bench] project: a large shrink held by the guard, then applied ({rounds} rounds of ~15 s)")
            samples["held_shrink_applied"] = project.held_shrink(agent.client, watcher, apps, rounds, HOLD, log)

            log(f"[bench] project: ready → routable, kill → out of rotation ({n} containers)")
            image = _webapp_image()
            docker_client = docker.from_env()
            stack.callback(docker_client.close)
            with project.registrator(agent.address, workdir):
                found, traces = project.ready_and_kill(agent.client, docker_client, image, watcher, apps, n, log)
            figures["traces"] |= traces
            summary(found)
            samples |= found

            events, reloads = (10, 20) if args.quick else (50, 100)
            log(f"[bench] failed requests under load: {events} scale events, {reloads} forced reloads")
            scaled = load.scale_events(agent.client, watcher, apps, events, log)
            figures["load_scale_events"] = {"events": events, **scaled}
            figures["load_forced_reloads"] = {"reloads": reloads, **load.forced_reloads(watcher, reloads, log)}

        figures["scale"] = {}
        for shape in scale.SHAPES:
            log(f"[bench] scale: {shape} (services x instances)")
            figures["scale"][shape] = scale.measure_scale(agent.client, agent.port, workdir, shape,
                                                          changes=10 if args.quick else 40,
                                                          idle=15 if args.quick else 60, apps=apps, log=log)
        rounds = 1 if args.quick else 2
        log(f"[bench] balance: one backend of {balance.SERVERS} servers, {rounds} request(s) per server")
        figures["balance"] = balance.measure_balance(workdir, rounds)
        if not args.skip_serf:
            from bench.serf import measure_serf  # the baseline's own prerequisites: serf

            log("[bench] the Serf baseline (the lab's design)")
            counts = {"join": 5, "leave": 5, "crash": 3} if args.quick else {"join": 30, "leave": 30, "crash": 12}
            serf = measure_serf(counts, workdir / "serf", log)
            samples |= {f"serf_{key}": values for key, values in serf.items()}

    machine = provenance.machine()
    result = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
              "machine": machine, "quick": args.quick, "skip_serf": args.skip_serf,
              "seconds": round(time.time() - started), "samples": samples, "figures": figures}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = report.table(result)
    print(table)
    report.plot(samples, out / "latency.png")
    problems = report.missing(result)
    if problems:
        log("[bench] FAILED: " + "; ".join(problems))
        return 1
    if not args.quick and args.out is None:
        (ROOT / "bench" / "RESULTS.md").write_text(report.markdown(result, table))
    log(f"[bench] done in {result['seconds']} s: {out / 'results.json'}"
        + ("" if args.quick or args.out else ", bench/RESULTS.md"))
    return 0


def _webapp_image() -> str:
    tag = "discovery/webapp:bench"
    subprocess.run(["docker", "build", "-q", "-f", "images/Dockerfile", "--target", "webapp", "-t", tag, "."],
                   cwd=ROOT, check=True, capture_output=True)
    return tag


if __name__ == "__main__":
    raise SystemExit(main())
