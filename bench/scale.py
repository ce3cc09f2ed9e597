"""1,000 instances over 100 services: the cost of a full apply, of one change at that size, the
watcher's memory, and how much it asks of Consul while nothing changes.

Consul is reached through a counting TCP proxy, so that requests are counted where they leave
the watcher, whatever Consul version runs.
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
from bench.project import statuses
from tests.processes import Watcher, WebApps, watcher_process
from tests.support import free_port, wait_until

# The watcher as users run it: its default coalescing (the test helper's own is faster).
DEFAULTS = ("--wait-min", "200ms", "--wait-max", "2s")

SERVICES, PER_SERVICE = 100, 10


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


@contextlib.contextmanager
def populated(client: consul.Consul) -> Iterator[None]:
    """Exactly 100 services × 10 passing instances (addresses that answer nothing: HAProxy's own
    checks mark them down, which changes nothing of what is measured)."""
    for service_id in client.agent.services():  # whatever earlier measurements left
        client.agent.service.deregister(service_id)
    for s in range(SERVICES):
        for i in range(PER_SERVICE):
            client.agent.service.register(f"svc{s:03d}", service_id=f"svc{s:03d}-{i}", address=f"127.0.{s}.{i + 1}",
                                          port=1, tags=["lb", f"lb.host=svc{s:03d}.bench"],
                                          check={"TTL": "1h", "Status": "passing"})
    try:
        yield
    finally:
        for s in range(SERVICES):
            for i in range(PER_SERVICE + 1):
                client.agent.service.deregister(f"svc{s:03d}-{i}")


def measure_scale(client: consul.Consul, consul_port: int, workdir: Path, changes: int, idle: float,
                  apps: WebApps, log: Callable[[str], None]) -> dict[str, object]:
    scale_dir = workdir / "scale"
    scale_dir.mkdir(exist_ok=True)
    with populated(client), CountingProxy(consul_port) as proxy, \
            watcher_process(scale_dir, f"http://127.0.0.1:{proxy.port}", *DEFAULTS, name="scale") as watcher:
        wait_until(lambda: "1000 instances in 100 services" in watcher.log_text(), "the full config", timeout=120)
        full = _applied_ms(watcher.log_text(), r"in ([\d.]+) ms \([^)]*1000 instances in 100 services\)")[0]
        log(f"  full apply of 1000 instances: {full:.0f} ms")
        one = []
        for c in range(changes):
            service = f"svc{c % SERVICES:03d}"
            before = len(_changes(watcher.log_text()))
            client.agent.service.register(service, service_id=f"{service}-{PER_SERVICE}", address="127.0.255.1",
                                          port=9000, tags=["lb", f"lb.host={service}.bench"],
                                          check={"TTL": "1h", "Status": "passing"})
            one.append(_next_change(watcher.log_text, before, f"+{service}-{PER_SERVICE}"))
            time.sleep(0.15)
            before = len(_changes(watcher.log_text()))
            client.agent.service.deregister(f"{service}-{PER_SERVICE}")
            one.append(_next_change(watcher.log_text, before, f"-{service}-{PER_SERVICE}"))
            time.sleep(0.15)
        outside = _outside(client, watcher, apps, changes // 2 or 1)
        log(f"  one change at full size, through HAProxy: p50 {sorted(outside)[len(outside) // 2] * 1000:.1f} ms")
        rss = _rss_mib(watcher.process.pid)
        time.sleep(2)  # let the last changes' blocking queries re-park
        before = proxy.requests
        log(f"  idle for {idle:.0f} s, counting requests to Consul")
        time.sleep(idle)
        per_minute = (proxy.requests - before) * 60 / idle
    return {"full_apply_ms": full, "one_change_ms": one, "one_change_outside_s": outside, "watcher_rss_mib": rss,
            "consul_requests_per_minute_idle": per_minute, "blocking_queries": SERVICES + 1, "idle_seconds": idle}


def _outside(client: consul.Consul, watcher: Watcher, apps: WebApps, rounds: int) -> list[float]:
    """One instance added at full size, seen from outside: from its registration (passing) until
    the first request through HAProxy that it serves. The service's 10 other instances answer
    nothing: once HAProxy's checks have them down, every request reaches the new one."""
    service, host = "svc000", "svc000.bench"
    wait_until(lambda: _down(watcher, service) >= PER_SERVICE, f"{service}'s silent instances down", timeout=30)
    port = apps.start("scale-probe")
    samples = []
    for r in range(rounds):
        service_id = f"{service}-probe-{r}"
        started = time.perf_counter()
        client.agent.service.register(service, service_id=service_id, address="127.0.0.1", port=port,
                                      tags=["lb", f"lb.host={host}"], check={"TTL": "1h", "Status": "passing"})
        served = first_time(lambda: tag_of(watcher.http_port, host) == "scale-probe", timeout=10)
        if served is None:
            raise RuntimeError(f"{service_id} never became routable at full size")
        samples.append(served - started)
        time.sleep(0.3)
        client.agent.service.deregister(service_id)
        wait_until(lambda sid=service_id: sid not in watcher.config, f"{service_id} to leave", timeout=10)
        time.sleep(0.3)
    return samples


def _down(watcher: Watcher, service: str) -> int:
    return sum(1 for status in statuses(watcher, service).values() if status.startswith("DOWN"))


def _next_change(log: Callable[[], str], before: int, what: str) -> float:
    """The apply time of the first Runtime API change logged after the `before` first ones."""
    try:
        wait_until(lambda: len(_changes(log())) > before, f"{what} to be applied", timeout=30)
    except AssertionError:
        raise AssertionError(f"{what} not applied; the watcher's last lines:\n{log()[-3000:]}") from None
    return _changes(log())[before]


def _changes(log: str) -> list[float]:
    """Apply times of Runtime API changes at full size (1000 or 1001 instances)."""
    return _applied_ms(log, r"in ([\d.]+) ms \(Runtime API, no reload; 100[01] instances in 100 services\)")
