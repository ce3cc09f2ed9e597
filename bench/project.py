"""This project, measured from the outside on real processes, with the settings users get.

Every measured service has BASE instances that stay (web apps on loopback, registered passing):
a measured arrival is BASE → BASE + 1 and a departure BASE + 1 → BASE, an ordinary membership
change under the default shrink guard (more than 50 % lost at once is held, ADR 0007), never a
new backend (a reload).

- passing → routable: an instance is registered already passing (the registrator's path for a
  ready container); until the first request through HAProxy is served by it. Requests are
  balanced round robin over BASE + 1 servers, so the poll that finds it may come up to BASE
  requests (≈ 1 ms on loopback) after it became routable.
- deregister → last request: the instance is deregistered; until the last request it serves.
- ready → routable: a web app container starts; from the moment its /health first answers
  (polled directly) until the first request through HAProxy is served by it. Docker events, the
  registrator's probe, Consul and the watcher are all inside this figure.
- kill → out of rotation: `docker kill` (SIGKILL) of a container; until HAProxy's running config
  no longer sends it requests (its server drains or is gone).
- a large shrink, held: BASE of BASE + 1 instances leave at once (more than half): the guard
  keeps them until Consul has said it for --shrink-hold, then applies it; from the deregistration
  until HAProxy no longer has them in rotation.

Changes are spaced beyond the watcher's --wait-min so that each is a lone change. Any sample that
cannot be taken (an instance never seen, never gone) ends the run with an error: no figure is
ever recorded for something that did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import consul
import docker

from bench.probe import LastSeen, first_time, tag_of
from discovery.haproxy.sockets import RuntimeAPI
from tests.processes import Watcher, WebApps
from tests.support import get_json, stop_process, wait_until

BASE = 3  # instances of every measured service that stay
SPACING = 0.3  # seconds between changes: more than the watcher's --wait-min (200ms, the default)
TIMEOUT = 10.0  # longest a lone change may take before the run fails (its figures are in ms)


class BenchError(RuntimeError):
    """A sample could not be taken: the run fails rather than record a figure for it."""


def steady(client: consul.Consul, watcher: Watcher, apps: WebApps, service: str, host: str) -> set[str]:
    """`service` with BASE passing instances that stay: web apps on loopback tagged `<service>-base-k`."""
    tags = set()
    for k in range(BASE):
        tag = f"{service}-base-{k}"
        client.agent.service.register(service, service_id=tag, address="127.0.0.1", port=apps.start(tag),
                                      tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "passing"})
        tags.add(tag)
    wait_until(lambda: serving(watcher, service) >= tags, f"the {BASE} instances of {service}", timeout=30)
    return tags


def statuses(watcher: Watcher, service: str) -> dict[str, str]:
    """server -> status (UP, DOWN, DRAIN, MAINT, ...) of `service`'s backend, as HAProxy has it now."""
    stats = asyncio.run(RuntimeAPI(watcher.sockets / "admin.sock").stats())
    return {key.server: live.status for key, live in stats.items() if key.backend == f"be_{service}"}


def serving(watcher: Watcher, service: str) -> set[str]:
    """The servers of `service`'s backend that HAProxy sends requests to now (UP, not draining)."""
    return {server for server, status in statuses(watcher, service).items() if status.startswith("UP")}


def trace(watcher: Watcher, started: float, seen: float, change: str) -> dict[str, float]:
    """Where one sample's time went, in ms per phase: the watcher's timeline of the apply that
    made `change` (e.g. `+probe-3`, `-ready-0123456789ab`; from its /status, on the same
    monotonic clock as ours), between the sample's start and the moment we saw the outcome."""
    def applied() -> dict[str, Any] | None:
        last = get_json(watcher.status_port, "/status")["last_apply"] or {}
        moments = (last.get("timeline") or {}).get("moments") or {}
        return moments if f"{change} " in str(last.get("what")) and "haproxy" in moments else None

    try:  # the watcher records its apply a moment after HAProxy has it, and we may look first
        moments = wait_until(applied, f"the watcher's apply of {change}", timeout=2, every=0.01)
    except AssertionError as error:
        raise BenchError(str(error)) from None
    points = list(moments.items())
    if any(later < earlier for (_, earlier), (_, later) in itertools.pairwise(points)):
        raise BenchError(f"the watcher's timeline of {change} is out of order: {points}")
    # Where two clocks' events meet, the order is not guaranteed, and a phase is then 0, never
    # negative; the sample's total (the row's figure) is measured from outside all the same:
    # - HAProxy applies a command before its answer is back at the watcher, which marks `haproxy`
    #   then: a poll of HAProxy's state can see a drain that much earlier (~1 ms);
    # - the registrator's readiness probe may see a container ready a moment before ours does.
    first, last = points[0][1], points[-1][1]
    phases = {points[0][0]: max(0.0, first - started) * 1000}
    phases |= {later: (at - before) * 1000 for (_, before), (later, at) in itertools.pairwise(points)}
    phases["seen"] = max(0.0, seen - last) * 1000
    return phases


def passing_and_deregister(client: consul.Consul, watcher: Watcher, apps: WebApps, iterations: int,
                           log: Callable[[str], None]) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """The samples of both rows, and each passing → routable sample's trace (see `trace`)."""
    host = "probe.bench"
    steady(client, watcher, apps, "probe", host)
    app_port = apps.start("probe")
    routable, gone, traces = [], [], []
    for i in range(iterations):
        service_id = f"probe-{i}"
        started = time.perf_counter()
        client.agent.service.register("probe", service_id=service_id, address="127.0.0.1", port=app_port,
                                      tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "passing"})
        served = first_time(lambda: tag_of(watcher.http_port, host) == "probe", timeout=TIMEOUT)
        if served is None:
            raise BenchError(f"instance {service_id} never became routable")
        routable.append(served - started)
        traces.append(trace(watcher, started, served, f"+{service_id}"))
        time.sleep(SPACING)
        with LastSeen(watcher.http_port, host) as seen:
            time.sleep(0.02)
            started = time.perf_counter()
            client.agent.service.deregister(service_id)
            if first_time(lambda sid=service_id: sid not in serving(watcher, "probe"), timeout=TIMEOUT,
                          every=0.002) is None:
                raise BenchError(f"instance {service_id} still in rotation {TIMEOUT:g} s after its deregistration")
            time.sleep(0.05)
        last = seen.last.get("probe")
        if last is None:
            raise BenchError(f"instance {service_id} never seen serving while it was deregistered")
        gone.append(max(0.0, last - started))
        time.sleep(SPACING)
        if (i + 1) % 50 == 0:
            log(f"  passing/deregister: {i + 1}/{iterations}")
    return {"passing_to_routable": routable, "deregister_to_last_request": gone}, traces


def held_shrink(client: consul.Consul, watcher: Watcher, apps: WebApps, rounds: int, hold: float,
                log: Callable[[str], None]) -> list[float]:
    """BASE of BASE + 1 instances leave at once (the Consul node that held them deregistered, one
    Raft write, as when a host is lost): seconds until HAProxy no longer has them in rotation."""
    host, node = "shrink.bench", "bench-lost-host"
    stays = "shrink-stays"
    client.agent.service.register("shrink", service_id=stays, address="127.0.0.1", port=apps.start(stays),
                                  tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "passing"})
    leaving = {f"shrink-{k}": apps.start(f"shrink-{k}") for k in range(BASE)}
    applied = []
    for r in range(rounds):
        for service_id, port in leaving.items():  # no check: passing as far as Consul's health API says
            client.catalog.register(node, "127.0.0.1", service={
                "Service": "shrink", "ID": service_id, "Address": "127.0.0.1", "Port": port,
                "Tags": ["lb", f"lb.host={host}"]})
        wait_until(lambda: serving(watcher, "shrink") >= {stays, *leaving}, "the 4 instances of shrink", timeout=30)
        time.sleep(SPACING)
        started = time.perf_counter()
        client.catalog.deregister(node)
        time.sleep(hold / 2)
        if len(serving(watcher, "shrink") & leaving.keys()) != BASE:
            raise BenchError("the large shrink was not held: the guard let it through at once")
        done = first_time(lambda: not serving(watcher, "shrink") & leaving.keys(), timeout=hold + TIMEOUT,
                          every=0.01)
        if done is None:
            raise BenchError(f"the held shrink was not applied within {hold + TIMEOUT:g} s")
        applied.append(done - started)
        log(f"  held shrink {r + 1}/{rounds}: applied {applied[-1]:.2f} s after the loss")
    return applied


@contextlib.contextmanager
def registrator(consul_address: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (workdir / "register.log").open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "discovery.register", "--consul", consul_address, "--id", "bench",
             "--listen", "off", "--resync", "30s"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"reconciled (start)" in (workdir / "register.log").read_bytes(), "the registrator")
        yield process
    finally:
        stop_process(process)


def ready_and_kill(client: consul.Consul, docker_client: docker.DockerClient, image: str, watcher: Watcher,
                   apps: WebApps, iterations: int, log: Callable[[str], None],
                   ) -> tuple[dict[str, list[float]], dict[str, list[dict[str, float]]]]:
    """The samples of both rows, and the traces of each (see `trace`)."""
    host = "ready.bench"
    steady(client, watcher, apps, "ready", host)
    labels = {"discovery.service": "ready", "discovery.port": "3000", "discovery.tags": f"lb,lb.host={host}",
              "discovery.check.interval": "5s", "discovery-bench": "1"}
    routable, out = [], []
    traces: dict[str, list[dict[str, float]]] = {"ready_to_routable": [], "kill_to_out_of_rotation": []}
    for i in range(iterations):
        container = docker_client.containers.run(image, detach=True, labels=labels, environment={"TAG": f"r{i}"})
        try:
            container.reload()
            address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
            ready = first_time(lambda address=address: _answers(address), timeout=30)
            served = first_time(lambda tag=f"r{i}": tag_of(watcher.http_port, host) == tag, timeout=30)
            if ready is None or served is None:
                raise BenchError(f"container {i} never became {'ready' if ready is None else 'routable'}")
            routable.append(served - ready)
            server = f"ready-{container.id[:12]}"
            traces["ready_to_routable"].append(trace(watcher, ready, served, f"+{server}"))
            time.sleep(SPACING)
            # Docker's kill call returns only once the container is reaped (~230 ms here), long
            # after its `kill` event went out: send it from a thread and watch meanwhile.
            killer = threading.Thread(target=container.kill)
            started = time.perf_counter()
            killer.start()
            removed = first_time(lambda server=server: server not in serving(watcher, "ready"), timeout=30,
                                 every=0.002)
            if removed is None:
                raise BenchError(f"{server} stayed in rotation after its kill")
            out.append(removed - started)
            traces["kill_to_out_of_rotation"].append(trace(watcher, started, removed, f"-{server}"))
            killer.join(30)
        finally:
            container.remove(force=True)
        time.sleep(SPACING)
        if (i + 1) % 25 == 0:
            log(f"  ready/kill: {i + 1}/{iterations}")
    return {"ready_to_routable": routable, "kill_to_out_of_rotation": out}, traces


def _answers(address: str) -> bool:
    try:
        return get_json(3000, "/health", host=address, timeout=0.2)["status"] == "ok"
    except Exception:
        return False
