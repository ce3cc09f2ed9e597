"""This project, measured from the outside on real processes.

- passing → routable: an instance is registered already passing (the registrator's path for a
  ready container); until the first request through HAProxy is served by it.
- deregister → last request: the instance is deregistered; until the last request it serves.
- ready → routable: a web app container starts; from the moment its /health first answers
  (polled directly) until the first request through HAProxy is served by it. Docker events, the
  registrator's probe, Consul and the watcher are all inside this figure.
- kill → out of rotation: `docker kill` (SIGKILL) of a container; until HAProxy's running config
  no longer sends it requests (its server drains or is gone).

Changes are spaced beyond the watcher's --wait-min so that each is a lone change.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import consul
import docker

from bench.probe import LastSeen, first_time, tag_of
from discovery.haproxy.sockets import RuntimeAPI
from tests.processes import Watcher
from tests.support import get_json, stop_process, wait_until

SPACING = 0.15  # seconds between changes: more than the watcher's --wait-min (100ms in the bench)


def anchor(client: consul.Consul, watcher: Watcher, service: str, host: str) -> None:
    """Keep `service` (and so its backend) in the catalog with one instance that never passes:
    every measured change is then a membership change, never a new backend (a reload)."""
    client.agent.service.register(service, service_id=f"{service}-anchor", address="127.0.0.1", port=1,
                                  tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "critical"})
    wait_until(lambda: f"backend be_{service}" in watcher.config, f"the {service} backend")


def passing_and_deregister(client: consul.Consul, watcher: Watcher, app_port: int, iterations: int,
                           log: Callable[[str], None]) -> dict[str, list[float]]:
    host = "probe.bench"
    anchor(client, watcher, "probe", host)
    routable, gone = [], []
    for i in range(iterations):
        service_id = f"probe-{i}"
        started = time.perf_counter()
        client.agent.service.register("probe", service_id=service_id, address="127.0.0.1", port=app_port,
                                      tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "passing"})
        served = first_time(lambda: tag_of(watcher.http_port, host) == "probe", timeout=10)
        if served is None:
            raise RuntimeError(f"instance {service_id} never became routable")
        routable.append(served - started)
        time.sleep(SPACING)
        with LastSeen(watcher.http_port, host) as seen:
            time.sleep(0.02)
            started = time.perf_counter()
            client.agent.service.deregister(service_id)
            wait_until(lambda: tag_of(watcher.http_port, host) is None, "the instance to stop serving", timeout=10)
            time.sleep(0.05)
        gone.append(max(0.0, seen.last.get("probe", started) - started))
        time.sleep(SPACING)
        if (i + 1) % 50 == 0:
            log(f"  passing/deregister: {i + 1}/{iterations}")
    return {"passing_to_routable": routable, "deregister_to_last_request": gone}


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
                   iterations: int, log: Callable[[str], None]) -> dict[str, list[float]]:
    host = "ready.bench"
    anchor(client, watcher, "ready", host)
    runtime = RuntimeAPI(watcher.sockets / "admin.sock")
    labels = {"discovery.service": "ready", "discovery.port": "3000", "discovery.tags": f"lb,lb.host={host}",
              "discovery.check.interval": "5s", "discovery-bench": "1"}
    routable, out = [], []
    for i in range(iterations):
        container = docker_client.containers.run(image, detach=True, labels=labels, environment={"TAG": f"r{i}"})
        try:
            container.reload()
            address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
            ready = first_time(lambda address=address: _answers(address), timeout=30)
            served = first_time(lambda tag=f"r{i}": tag_of(watcher.http_port, host) == tag, timeout=30)
            if ready is None or served is None:
                raise RuntimeError(f"container {i} never became {'ready' if ready is None else 'routable'}")
            routable.append(served - ready)
            time.sleep(SPACING)
            server = f"ready-{container.id[:12]}"
            # Docker's kill call returns only once the container is reaped (~230 ms here), long
            # after its `kill` event went out: send it from a thread and watch meanwhile.
            killer = threading.Thread(target=container.kill)
            started = time.perf_counter()
            killer.start()
            removed = first_time(lambda server=server: not asyncio.run(_in_rotation(runtime, server)), timeout=30,
                                 every=0.002)
            if removed is None:
                raise RuntimeError(f"{server} stayed in rotation after its kill")
            out.append(removed - started)
            killer.join(30)
        finally:
            container.remove(force=True)
        time.sleep(SPACING)
        if (i + 1) % 25 == 0:
            log(f"  ready/kill: {i + 1}/{iterations}")
    return {"ready_to_routable": routable, "kill_to_out_of_rotation": out}


def _answers(address: str) -> bool:
    try:
        return get_json(3000, "/health", host=address, timeout=0.2)["status"] == "ok"
    except Exception:
        return False


async def _in_rotation(runtime: RuntimeAPI, server: str) -> bool:
    live = (await runtime.stats()).get(("be_ready", server))
    return live is not None and live.status.startswith("UP")
