"""The physical floor: what Consul and HAProxy cost by themselves, with nothing of ours between.

- Consul: a blocking query is parked on an index; a service is registered; how long until the
  query returns.
- HAProxy: one Runtime API round trip (`set server ... state ready`), and `add server` +
  `enable server` (what the watcher does for a new instance).
- HAProxy and the probe: a server added (with its health check, as the watcher adds it) to a
  backend of BASE web apps, until the first request through HAProxy reaches it, polled exactly
  as the project's passing → routable row polls. Round robin serves the servers already in its
  cycle first, so this costs a few requests even with nothing of ours in between: the part of
  the project's figure that is HAProxy's and the probe's own.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path

import consul

from bench.probe import first_time, tag_of
from bench.project import BASE  # the servers already in the backend: as many as the project's services keep
from discovery.files import write_atomic
from discovery.haproxy.binary import ManagedHAProxy
from discovery.haproxy.config import Renderer, RenderSettings, server_arguments
from discovery.haproxy.sockets import RuntimeAPI
from discovery.model import DesiredState, Instance, ServerKey, Service
from tests.processes import WebApps
from tests.support import free_port


def consul_wake(client: consul.Consul, iterations: int) -> list[float]:
    """Register → the blocking query on that service wakes, in seconds. A query that woke before
    the registration (an unrelated index bump, e.g. the previous deregistration reaching the
    catalog late) measured nothing: that sample is taken again, never recorded as negative."""
    samples: list[float] = []
    attempt = 0
    while len(samples) < iterations:
        attempt += 1
        if attempt > 3 * iterations:
            raise RuntimeError("Consul's blocking query kept waking before the registration")
        index, _ = client.health.service("floor")
        woke: list[float] = []

        def wait(index: str = index, woke: list[float] = woke) -> None:
            client.health.service("floor", index=index, wait="30s")
            woke.append(time.perf_counter())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.01)  # let the query park on the server before the change
        started = time.perf_counter()
        client.agent.service.register("floor", service_id=f"floor-{attempt}", address="127.0.0.1", port=1)
        waiter.join(35)
        if woke and woke[0] >= started:
            samples.append(woke[0] - started)
        client.agent.service.deregister(f"floor-{attempt}")
    return samples


async def _runtime_calls(workdir: Path, iterations: int) -> dict[str, list[float]]:
    settings = RenderSettings(http_bind=f"127.0.0.1:{free_port()}", stats_bind=f"127.0.0.1:{free_port()}",
                              runtime_socket=str(workdir / "floor-admin.sock"))
    state = DesiredState((Service("floor", (Instance("floor", "s0", "127.0.0.1", 1),), is_default=True),))
    config = workdir / "floor.cfg"
    write_atomic(config, Renderer().render(state, settings))
    haproxy = ManagedHAProxy("haproxy", config, workdir / "floor-master.sock", log=subprocess.DEVNULL)
    await haproxy.start()
    runtime = RuntimeAPI(Path(settings.runtime_socket))
    set_state, add_enable = [], []
    try:
        for i in range(iterations):
            started = time.perf_counter()
            await runtime.set_state(ServerKey("be_floor", "s0"), "ready")
            set_state.append(time.perf_counter() - started)
            started = time.perf_counter()
            await runtime.add_server(ServerKey("be_floor", f"s{i + 1}"), "127.0.0.1:2", checked=False)
            add_enable.append(time.perf_counter() - started)
            await runtime.delete_server(ServerKey("be_floor", f"s{i + 1}"), force=False)
    finally:
        await haproxy.stop()
    return {"runtime_set_server": set_state, "runtime_add_enable": add_enable}


async def _first_request(workdir: Path, iterations: int, apps: WebApps) -> list[float]:
    http_port = free_port()
    settings = RenderSettings(http_bind=f"127.0.0.1:{http_port}", stats_bind=f"127.0.0.1:{free_port()}",
                              runtime_socket=str(workdir / "floor-rr-admin.sock"))
    base = tuple(Instance("floor", f"base-{k}", "127.0.0.1", apps.start(f"floor-base-{k}")) for k in range(BASE))
    config = workdir / "floor-rr.cfg"
    text = Renderer().render(DesiredState((Service("floor", base, is_default=True),)), settings)
    write_atomic(config, text)
    arguments = next(iter(server_arguments(text).values())).split(maxsplit=1)[1]  # the options after addr:port
    new = f"127.0.0.1:{apps.start('floor-new')} {arguments}"
    haproxy = ManagedHAProxy("haproxy", config, workdir / "floor-rr-master.sock", log=subprocess.DEVNULL)
    await haproxy.start()
    runtime = RuntimeAPI(Path(settings.runtime_socket))
    samples = []
    try:
        for i in range(iterations):
            key = ServerKey("be_floor", f"new-{i}")
            started = time.perf_counter()
            await runtime.add_server(key, new, checked=True)
            served = first_time(lambda: tag_of(http_port) == "floor-new", timeout=10)
            if served is None:
                raise RuntimeError(f"HAProxy never sent a request to {key.server}")
            samples.append(served - started)
            await runtime.delete_server(key, force=True)
    finally:
        await haproxy.stop()
    return samples


def measure_floor(client: consul.Consul, workdir: Path, iterations: int, apps: WebApps) -> dict[str, list[float]]:
    return {"consul_wake": consul_wake(client, iterations), **asyncio.run(_runtime_calls(workdir, iterations)),
            "runtime_first_request": asyncio.run(_first_request(workdir, iterations, apps))}
