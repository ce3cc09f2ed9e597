"""The watcher at scale, one shape at a time — 100 services × 10 instances, 1 service × 10,000,
500 services × 20: the cost of a full apply, of one change at that size (the watcher's log, and
through HAProxy from outside), the watcher's memory, and how much it asks of Consul while nothing
changes.

Consul is reached through a counting TCP proxy, so that requests are counted where they leave
the watcher, whatever Consul version runs. The instances are registered on a node of their own
through Consul's transaction API (64 a request: 10,000 in about a second, where one agent
registration each takes ~10 ms); with no check, Consul's health API lists them as passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import consul

from bench.probe import first_time, tag_of
from bench.project import statuses, trace
from discovery.haproxy.binary import validate
from tests.processes import Watcher, WebApps, watcher_process
from tests.support import free_port, wait_until

# The watcher as users run it: its default coalescing (the test helper's own is faster).
DEFAULTS = ("--wait-min", "200ms", "--wait-max", "2s")

# name -> (services, instances per service)
SHAPES = {"100x10": (100, 10), "1x10000": (1, 10000), "500x20": (500, 20)}
NODE = "bench-scale"  # the catalog node the instances live on (not the agent's: its sync would remove them)
TXN_OPS = 64  # Consul's limit of operations in one transaction


class CountingProxy:
    """Forwards TCP to Consul and counts the HTTP requests that go through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.requests = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, count: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if count:
                        self.requests += len(re.findall(rb"(?:^|\r\n)(?:GET|PUT|POST|DELETE) /v1/", data))
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False))

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _applied_ms(log: str, pattern: str) -> list[float]:
    return [float(ms) for ms in re.findall(pattern, log)]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _txn(client: consul.Consul, ops: list[dict[str, object]]) -> None:
    for at in range(0, len(ops), TXN_OPS):
        client.txn.put(ops[at:at + TXN_OPS])


def _service(s: int) -> str:
    return f"svc{s:03d}"


@contextlib.contextmanager
def populated(client: consul.Consul, services: int, per_service: int) -> Iterator[None]:
    """Exactly `services` × `per_service` passing instances on node NODE, at addresses that answer
    nothing (HAProxy's own checks mark them down, which changes nothing of what is measured)."""
    for service_id in client.agent.services():  # whatever earlier measurements left
        client.agent.service.deregister(service_id)
    client.catalog.deregister(NODE)  # and an earlier shape
    client.catalog.register(NODE, "127.0.0.1")
    _txn(client, [{"Service": {"Verb": "set", "Node": NODE, "Service": {
        "Service": _service(s), "ID": f"{_service(s)}-{i}", "Address": f"127.{100 + i // 62500}.{i // 250 % 250}"
        f".{i % 250 + 1}", "Port": 1 + s, "Tags": ["lb", f"lb.host={_service(s)}.bench"]}}}
        for s in range(services) for i in range(per_service)])
    try:
        yield
    finally:
        client.catalog.deregister(NODE)


def measure_scale(client: consul.Consul, consul_port: int, workdir: Path, shape: str, changes: int, idle: float,
                  apps: WebApps, log: Callable[[str], None]) -> dict[str, object]:
    services, per_service = SHAPES[shape]
    total = services * per_service
    scale_dir = workdir / f"scale-{shape}"
    scale_dir.mkdir(exist_ok=True)
    with populated(client, services, per_service), CountingProxy(consul_port) as proxy, \
            watcher_process(scale_dir, f"http://127.0.0.1:{proxy.port}", *DEFAULTS, name="scale") as watcher:
        full_line = rf"in ([\d.]+) ms \([^)]*{total} instances in {services} services\)"
        wait_until(lambda: re.search(full_line, watcher.log_text()), f"the full config of {shape}", timeout=300)
        full = _applied_ms(watcher.log_text(), full_line)[0]
        log(f"  {shape}: full apply of {total} instances: {full:.0f} ms")
        answer = _consul_answer_ms(client, _service(0))
        checks = []
        for _ in range(3):
            started = time.perf_counter()
            asyncio.run(validate(watcher.config, "haproxy", scale_dir))
            checks.append((time.perf_counter() - started) * 1000)
        one = []
        changed = (rf"in ([\d.]+) ms \(Runtime API, no reload; (?:{total}|{total + 1}) instances "
                   rf"in {services} services\)")
        for c in range(changes):
            service = _service(c % services)
            before = len(_applied_ms(watcher.log_text(), changed))
            client.agent.service.register(service, service_id=f"{service}-extra", address="127.0.255.1",
                                          port=9000, tags=["lb", f"lb.host={service}.bench"],
                                          check={"TTL": "1h", "Status": "passing"})
            one.append(_next_change(watcher.log_text, changed, before, f"+{service}-extra"))
            time.sleep(0.15)
            before = len(_applied_ms(watcher.log_text(), changed))
            client.agent.service.deregister(f"{service}-extra")
            one.append(_next_change(watcher.log_text, changed, before, f"-{service}-extra"))
            time.sleep(0.15)
        outside, traces = _outside(client, watcher, apps, per_service, changes // 2 or 1)
        log(f"  {shape}: one change, through HAProxy: p50 {sorted(outside)[len(outside) // 2] * 1000:.1f} ms")
        rss = _rss_mib(watcher.process.pid)
        time.sleep(2)  # let the last changes' blocking queries re-park
        before = proxy.requests
        log(f"  {shape}: idle for {idle:.0f} s, counting requests to Consul")
        time.sleep(idle)
        per_minute = (proxy.requests - before) * 60 / idle
    return {"services": services, "instances": total, "full_apply_ms": full,
            "haproxy_check_ms": sorted(checks)[1], "one_change_ms": one,
            "one_change_outside_s": outside, "one_change_outside_traces": traces, "consul_answer_ms": answer,
            "watcher_rss_mib": rss, "consul_requests_per_minute_idle": per_minute,
            "blocking_queries": services + 1, "idle_seconds": idle}


def _outside(client: consul.Consul, watcher: Watcher, apps: WebApps, silent: int,
             rounds: int) -> tuple[list[float], list[dict[str, float]]]:
    """One instance added at full size, seen from outside: from its registration (passing) until
    the first request through HAProxy that it serves. The service's `silent` other instances
    answer nothing: once HAProxy's checks have them down, every request reaches the new one."""
    service, host = _service(0), f"{_service(0)}.bench"
    wait_until(lambda: _down(watcher, service) >= silent, f"{service}'s silent instances down", timeout=60)
    tag = f"scale-probe-{silent}"
    port = apps.start(tag)
    samples: list[float] = []
    traces: list[dict[str, float]] = []
    for r in range(rounds):
        service_id = f"{service}-probe-{r}"
        started = time.perf_counter()
        client.agent.service.register(service, service_id=service_id, address="127.0.0.1", port=port,
                                      tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "passing"})
        served = first_time(lambda: tag_of(watcher.http_port, host) == tag, timeout=10)
        if served is None:
            raise RuntimeError(f"{service_id} never became routable at full size")
        samples.append(served - started)
        traces.append(trace(watcher, started, served, f"+{service_id}"))
        time.sleep(0.3)
        client.agent.service.deregister(service_id)
        wait_until(lambda sid=service_id: sid not in watcher.config, f"{service_id} to leave", timeout=10)
        time.sleep(0.3)
    apps.stop(tag)
    return samples, traces


def _consul_answer_ms(client: consul.Consul, service: str) -> float:
    """How long Consul takes to answer the watcher's query for a whole service (median of 3, ms):
    every change to a service sends its whole instance list again, so this is the floor of one
    change at that size."""
    took = []
    for _ in range(3):
        started = time.perf_counter()
        client.health.service(service, passing=True)
        took.append((time.perf_counter() - started) * 1000)
    return sorted(took)[1]


def _down(watcher: Watcher, service: str) -> int:
    return sum(1 for status in statuses(watcher, service).values() if status.startswith("DOWN"))


def _next_change(log: Callable[[], str], pattern: str, before: int, what: str) -> float:
    """The apply time of the first Runtime API change logged after the `before` first ones."""
    try:
        wait_until(lambda: len(_applied_ms(log(), pattern)) > before, f"{what} to be applied", timeout=30)
    except AssertionError:
        raise AssertionError(f"{what} not applied; the watcher's last lines:\n{log()[-3000:]}") from None
    return _applied_ms(log(), pattern)[before]
