"""Failed requests under steady load while instances come and go and HAProxy reloads.

The load is GETs through HAProxy, each on a new connection (the hardest case for a reload: every
request needs the listening socket), from a few concurrent clients; any error or non-200 counts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import consul

from discovery.haproxy import MasterCLI
from tests.processes import Watcher, WebApps
from tests.support import wait_until


class SteadyLoad:
    """`clients` concurrent GET loops in their own thread and event loop."""

    def __init__(self, port: int, clients: int = 8) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.clients = clients
        self.outcomes: Counter[str] = Counter()
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.perf_counter()
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))
            self.seconds = time.perf_counter() - started

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.get(self.url) as response:
                    await response.read()
                    self.outcomes["ok" if response.status == 200 else f"http {response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as error:
                self.outcomes[type(error).__name__] += 1

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.total - self.outcomes["ok"]

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


def scale_events(client: consul.Consul, watcher: Watcher, apps: WebApps, events: int,
                 log: Callable[[str], None]) -> dict[str, float]:
    """`events` scale-ups and scale-downs (alternating) of the default service under load."""
    for name in ("base-1", "base-2"):
        client.agent.service.register("load", service_id=name, address="127.0.0.1", port=apps.start(name),
                                      tags=["lb", "lb.default"], check={"TTL": "1h", "Status": "passing"})
    wait_until(lambda: watcher.tags_served() == {"base-1", "base-2"}, "the load service")
    with SteadyLoad(watcher.http_port) as load:
        time.sleep(1)
        for i in range(events // 2):
            name = f"extra-{i}"
            port = apps.start(name)
            client.agent.service.register("load", service_id=name, address="127.0.0.1", port=port,
                                          tags=["lb", "lb.default"], check={"TTL": "1h", "Status": "passing"})
            time.sleep(0.3)
            # Scale-down as an orchestrator does it: out of the catalog first, then SIGTERM
            # (the web app finishes what it has in flight).
            client.agent.service.deregister(name)
            time.sleep(0.3)
            apps.stop(name)
            if (i + 1) % 10 == 0:
                log(f"  scale events: {2 * (i + 1)}/{events}")
        time.sleep(1)
    return {"requests": load.total, "failed": load.failed, "rate": load.rate}


def forced_reloads(watcher: Watcher, reloads: int, log: Callable[[str], None]) -> dict[str, float]:
    """`reloads` full reloads through the master CLI, one every 200 ms, under load."""
    master = MasterCLI(watcher.sockets / "master.sock")
    with SteadyLoad(watcher.http_port) as load:
        time.sleep(1)
        for i in range(reloads):
            asyncio.run(master.reload())
            time.sleep(0.2)
            if (i + 1) % 25 == 0:
                log(f"  forced reloads: {i + 1}/{reloads}")
        time.sleep(1)
    return {"requests": load.total, "failed": load.failed, "rate": load.rate}
