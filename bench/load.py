"""Failed requests under steady load while instances come and go and HAProxy reloads.

The load (`tests.support.Load`) is GETs through HAProxy from 8 concurrent clients, each request on
a new connection; any error or non-200 counts as failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import consul

from discovery.haproxy.sockets import MasterCLI
from tests.processes import Watcher, WebApps
from tests.support import Load, wait_until


def scale_events(client: consul.Consul, watcher: Watcher, apps: WebApps, events: int,
                 log: Callable[[str], None]) -> dict[str, float]:
    """`events` scale-ups and scale-downs (alternating) of the default service under load."""
    for name in ("base-1", "base-2"):
        client.agent.service.register("load", service_id=name, address="127.0.0.1", port=apps.start(name),
                                      tags=["lb", "lb.default"], check={"TTL": "1h", "Status": "passing"})
    wait_until(lambda: watcher.tags_served() == {"base-1", "base-2"}, "the load service")
    with Load(watcher.http_port, clients=8) as load:
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
    with Load(watcher.http_port, clients=8) as load:
        time.sleep(1)
        for i in range(reloads):
            asyncio.run(master.reload())
            time.sleep(0.2)
            if (i + 1) % 25 == 0:
                log(f"  forced reloads: {i + 1}/{reloads}")
        time.sleep(1)
    return {"requests": load.total, "failed": load.failed, "rate": load.rate}
