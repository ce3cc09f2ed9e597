"""Faults under steady load on the real compose stack: what clients see, how long until things
are whole again, and what was lost. Each case adds a row to the fault matrix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.stack import ComposeStack
from tests.support import Load, http_get, wait_until

pytestmark = pytest.mark.e2e

STACK = ComposeStack("discovery-faults")
HTTP = 80
MASTER = "from discovery.haproxy import MasterCLI; from pathlib import Path; import asyncio; "
PROCESSES = MASTER + "t = asyncio.run(MasterCLI(Path('/run/haproxy/master.sock')).processes()); "


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    with STACK.up() as stack:
        wait_until(lambda: STACK.rendered_servers() == STACK.webapp_ids() and len(STACK.webapp_ids()) == 2,
                   "two web apps behind HAProxy", timeout=30)
        yield stack


def status() -> dict:
    return json.loads(STACK.in_ha("import urllib.request; print(urllib.request.urlopen("
                                  "'http://127.0.0.1:9105/status', timeout=2).read().decode())"))


def reloads() -> int:
    return int(STACK.in_ha(PROCESSES + "print(t.master_reloads)"))


def serving_matches() -> bool:
    live = {i["server"] for i in status()["services"]["webapp"]["instances"]}
    return live == STACK.webapp_ids() == STACK.rendered_servers()


def test_watcher_killed_haproxy_keeps_serving_and_no_needless_reload(stack, record):
    before = reloads()
    with Load(HTTP) as load:
        time.sleep(0.5)
        STACK.run("exec", "-T", "ha", "supervisorctl", "signal", "KILL", "watcher")
        killed = time.monotonic()
        wait_until(lambda: status()["last_error"] is None, "the watcher to answer again", timeout=20)
        recovered = time.monotonic() - killed
        wait_until(serving_matches, "the watcher's view to match the containers")
        time.sleep(0.5)
    assert load.failed == 0, (load.outcomes, load.errors)
    assert reloads() == before, "a restarted watcher must adopt what HAProxy runs, not reload it"
    record("watcher killed (-9), restarted by supervisord", f"{load.total} GETs, {load.rate:.0f}/s",
           str(load.failed), f"{recovered:.1f} s", "0")


def test_haproxy_worker_killed_comes_back_with_the_same_servers(stack, record):
    worker = int(STACK.in_ha(PROCESSES + "print(t.workers[0][0])"))
    with Load(HTTP) as load:
        time.sleep(0.5)
        STACK.in_ha(f"import os; os.kill({worker}, 9)")
        killed = time.monotonic()
        wait_until(lambda: http_get(HTTP)[0] == 200 and serving_matches(), "HAProxy to serve again", timeout=30)
        recovered = time.monotonic() - killed
        time.sleep(0.5)
    # The master exits with its worker; supervisord restarts HAProxy on the file on disk, which
    # lists exactly the live servers: a bounded blip, nothing lost.
    assert recovered < 15
    record("HAProxy worker killed (-9)", f"{load.total} GETs, {load.rate:.0f}/s",
           f"{load.failed} (blip while HAProxy restarts)", f"{recovered:.1f} s", "0")


def test_all_instances_gone_answers_503_cleanly(stack, record):
    STACK.run("up", "-d", "--no-recreate", "--scale", "webapp=0", "webapp")
    # The registrator deregistered every instance: Consul lists no webapp at all, so the backend
    # goes with it and requests get the clean "no service" 503 — Consul really says none.
    wait_until(lambda: not status()["services"].get("webapp", {}).get("instances"), "Consul to say: none")
    wait_until(lambda: http_get(HTTP)[0] == 503, "HAProxy to answer 503")
    assert http_get(HTTP)[2].strip() == b"no service for this request"
    assert STACK.rendered_servers() == set()
    STACK.run("up", "-d", "--no-recreate", "--scale", "webapp=2", "webapp")
    started = time.monotonic()
    wait_until(lambda: len(STACK.webapp_ids()) == 2 and serving_matches(), "two web apps back", timeout=30)
    record("all instances gone (Consul says none), then back", "single GETs", "503 while none (by design)",
           f"{time.monotonic() - started:.1f} s to serve again", "0")
