"""Does the shipped template's balancing serve every server of a 10,000-server backend?

HAProxy documents `roundrobin` as "limited by design to 4095 active servers per backend" (ADR
0012). This renders the shipped template for one service of SERVERS instances, all pointing at
one HAProxy frontend that answers 200 by itself (so that HAProxy's own checks pass and no web
app is the bottleneck), sends ROUNDS × SERVERS requests through it, and counts from `show stat`
how many requests each server got: with every server used exactly ROUNDS times, nothing is left
out and nothing is favoured.
"""

from __future__ import annotations

import asyncio
import http.client
import subprocess
from collections import Counter
from pathlib import Path

from discovery.files import write_atomic
from discovery.haproxy.binary import ManagedHAProxy
from discovery.haproxy.config import Renderer, RenderSettings
from discovery.haproxy.sockets import RuntimeAPI
from discovery.model import DesiredState, Instance, Service
from tests.support import free_port

SERVERS = 10_000
RESPONDER = """
frontend responder
    mode http
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "ok"
"""


def _send(port: int, count: int) -> int:
    """`count` requests on fresh connections (as the project's probes send them); the 200s."""
    answered = 0
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/", headers={"Host": "big.bench"})
            response = connection.getresponse()
            response.read()
            answered += response.status == 200
        finally:
            connection.close()
    return answered


async def _measure(workdir: Path, rounds: int) -> dict[str, object]:
    http_port, responder_port = free_port(), free_port()
    settings = RenderSettings(http_bind=f"127.0.0.1:{http_port}", stats_bind=f"127.0.0.1:{free_port()}",
                              runtime_socket=str(workdir / "balance-admin.sock"))
    instances = tuple(Instance("big", f"big-{i}", "127.0.0.1", responder_port) for i in range(SERVERS))
    text = Renderer().render(DesiredState((Service("big", instances, is_default=True),)), settings)
    algorithm = next(line.split()[1] for line in text.splitlines() if line.strip().startswith("balance "))
    config = workdir / "balance.cfg"
    write_atomic(config, text + RESPONDER.format(port=responder_port))
    haproxy = ManagedHAProxy("haproxy", config, workdir / "balance-master.sock", log=subprocess.DEVNULL)
    await haproxy.start()
    runtime = RuntimeAPI(Path(settings.runtime_socket))
    try:
        for _ in range(600):  # until HAProxy's first checks have run on every server (inter 2s)
            stats = await runtime.stats()
            if (up := sum(1 for s in stats.values() if s.status.startswith("UP"))) == SERVERS:
                break
            await asyncio.sleep(0.1)
        else:  # a server down would show as "never used" and blame the balancing
            raise RuntimeError(f"only {up} of {SERVERS} servers UP after 60 s: the measurement cannot be taken")
        answered = await asyncio.to_thread(_send, http_port, rounds * SERVERS)
        text = await runtime.command("show stat")
    finally:
        await haproxy.stop()
    served = Counter()
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 7 and fields[0] == "be_big" and fields[1] not in ("BACKEND", "FRONTEND"):
            served[int(fields[7])] += 1  # stot: sessions this server took
    return {"algorithm": algorithm, "servers": SERVERS, "requests": rounds * SERVERS, "answered": answered,
            "servers_listed": sum(served.values()), "never_used": served.get(0, 0),
            "fewest": min(served) if served else 0, "most": max(served) if served else 0}


def measure_balance(workdir: Path, rounds: int) -> dict[str, object]:
    return asyncio.run(_measure(workdir, rounds))
