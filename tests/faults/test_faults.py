"""Faults under steady load on the real compose stack: what clients see, how long until things
are whole again, and what was lost. Each case adds a row to the fault matrix, and each case with
an instance alive checks that the rendered config never had an empty backend."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.stack import ComposeStack
from tests.support import Load, NeverEmpty, http_get, wait_until

pytestmark = pytest.mark.e2e

STACK = ComposeStack("discovery-faults")
HTTP = STACK.http  # a free loopback port
MASTER = "from discovery.haproxy.sockets import MasterCLI; from pathlib import Path; import asyncio; "
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


def never_empty() -> NeverEmpty:
    return NeverEmpty(STACK.serving_servers)


def test_watcher_killed_haproxy_keeps_serving_and_no_needless_reload(stack, record):
    before = reloads()
    with Load(HTTP) as load, never_empty() as probe:
        time.sleep(0.5)
        STACK.run("exec", "-T", "ha", "supervisorctl", "signal", "KILL", "watcher")
        killed = time.monotonic()
        wait_until(lambda: status()["last_error"] is None, "the watcher to answer again", timeout=20)
        recovered = time.monotonic() - killed
        wait_until(serving_matches, "the watcher's view to match the containers")
        time.sleep(0.5)
    probe.check()
    load.assert_no_failure()
    assert reloads() == before, "a restarted watcher must adopt what HAProxy runs, not reload it"
    record("watcher killed (-9), restarted by supervisord", f"{load.total} GETs, {load.rate:.0f}/s",
           str(load.failed), f"{recovered:.1f} s", "0")


def test_haproxy_worker_killed_comes_back_with_the_same_servers(stack, record):
    worker = int(STACK.in_ha(PROCESSES + "print(t.workers[0][0])"))
    with Load(HTTP) as load, never_empty() as probe:
        time.sleep(0.5)
        STACK.in_ha(f"import os; os.kill({worker}, 9)")
        killed = time.monotonic()
        wait_until(lambda: http_get(HTTP)[0] == 200 and serving_matches(), "HAProxy to serve again", timeout=30)
        recovered = time.monotonic() - killed
        time.sleep(0.5)
    # The master exits with its worker; supervisord restarts HAProxy on the file on disk, which
    # lists exactly the live servers: a bounded blip, nothing lost.
    probe.check()
    # Measured 0.8-3.9 s over the CI runs (tests/faults/results.json: 0.8 s at 5f873ae, 2.9 s at
    # eb68bb5; supervisord's restart plus HAProxy's start): 15 s is ~4x the slowest, a bound on a
    # hang, not a target.
    assert recovered < 15
    # The failures are a blip while nothing listens, never a trickle afterwards (the same bound as
    # `restart ha`, whose blip is the longer one).
    window = max(load.failed_at) - min(load.failed_at) if load.failed_at else 0.0
    assert window < 10, f"failures spread over {window:.1f} s"
    record("HAProxy worker killed (-9)", f"{load.total} GETs, {load.rate:.0f}/s",
           f"{load.failed} (blip while HAProxy restarts)", f"{recovered:.1f} s", "0")


def test_compose_restart_ha_is_a_bounded_blip(stack, record):
    with Load(HTTP) as load, never_empty() as probe:
        time.sleep(0.5)
        STACK.run("restart", "ha")  # supervisord stops the watcher, then HAProxy (soft stop)
        restarted = time.monotonic()
        wait_until(lambda: http_get(HTTP)[0] == 200 and serving_matches(), "HAProxy and the watcher back",
                   timeout=30)
        recovered = time.monotonic() - restarted
        time.sleep(0.5)
    probe.check()
    # Nothing listens between HAProxy's stop and its start in the new container: requests in that
    # window fail (connection refused or reset). It starts on the file it had, before Consul answers.
    window = max(load.failed_at) - min(load.failed_at) if load.failed_at else 0.0
    # Measured: failures spread over 1.9-3.9 s and back 3.0-3.4 s after `restart` returned
    # (results.json at 5f873ae and eb68bb5, and earlier CI runs); 10 s and 15 s are 2.5-4x the slowest.
    assert window < 10, f"failures spread over {window:.1f} s"
    assert recovered < 15
    record("`docker compose restart ha` (HAProxy and watcher restart)", load.summary,
           f"{load.failed} (blip: nothing listens for {window:.1f} s)",
           f"{recovered:.1f} s after `restart` returned", "0")


def test_socket_proxy_stopped_breaks_the_event_stream_and_nothing_is_missed(stack, record):
    old = STACK.run("ps", "-q", "webapp").stdout.split()
    with Load(HTTP) as load, never_empty() as probe:
        time.sleep(0.5)
        STACK.run("stop", "-t", "1", "socket-proxy")  # the registrator's event stream breaks; dockerd untouched
        STACK.run("up", "-d", "--no-recreate", "--no-deps", "--scale", "webapp=3", "webapp")
        subprocess.run(["docker", "stop", "-t", "5", old[0]], check=True, capture_output=True)
        time.sleep(1)
        STACK.run("start", "socket-proxy")
        back = time.monotonic()
        wait_until(lambda: len(STACK.webapp_ids()) == 2 and serving_matches(), "Consul and HAProxy to match the "
                   "running containers", timeout=60)
        recovered = time.monotonic() - back
        time.sleep(0.5)
    probe.check()
    load.assert_no_failure()
    logs = STACK.run("logs", "--no-color", "registrator").stdout
    assert "Docker event stream broken" in logs
    STACK.run("rm", "-f", check=False)
    record("socket-proxy stopped (registrator's Docker event stream broken) while 1 container starts and 1 stops, "
           "then started", load.summary, str(load.failed), f"{recovered:.1f} s after the proxy is back", "0")


def test_all_instances_gone_answers_503_cleanly(stack, record):
    gone = time.monotonic()
    STACK.run("up", "-d", "--no-recreate", "--scale", "webapp=0", "webapp")
    # The registrator deregistered every instance: Consul lists no webapp at all. The shrink guard
    # (ADR 0007) holds that for --shrink-hold (15 s): HAProxy keeps the servers and, finding them
    # down, answers 503 itself. Then the backend goes and requests get the clean "no service" 503:
    # Consul really says none, which is not "Consul cannot be asked".
    wait_until(lambda: status()["held_shrinks"] == ["webapp"], "the shrink to be held")
    wait_until(lambda: not status()["services"].get("webapp", {}).get("instances"), "Consul to say: none",
               timeout=30)
    held = time.monotonic() - gone
    logs = STACK.run("logs", "--no-color", "ha").stdout
    assert "large shrink held" in logs and "webapp: held shrink applied, Consul kept saying it" in logs
    wait_until(lambda: http_get(HTTP)[0] == 503, "HAProxy to answer 503")
    assert http_get(HTTP)[2].strip() == b"no service for this request"
    assert STACK.rendered_servers() == set()
    STACK.run("up", "-d", "--no-recreate", "--scale", "webapp=2", "webapp")
    started = time.monotonic()
    wait_until(lambda: len(STACK.webapp_ids()) == 2 and serving_matches(), "two web apps back", timeout=30)
    record("all instances gone (Consul says none), then back", "single GETs",
           f"503 while none (by design); backend removed {held:.1f} s after the scale-down began "
           "(shrink guard: 15 s hold)",
           f"{time.monotonic() - started:.1f} s to serve again", "0")
