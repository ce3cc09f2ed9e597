"""A three-server Consul cluster (compose profile `cluster`) losing its leader under load: the
watcher's blocking queries go on against its own server (stale reads within --max-stale), no
request fails, and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import consul
import pytest
from consul.callback import CB

from tests.stack import ComposeStack
from tests.support import Load, NeverEmpty, http_get, wait_until

pytestmark = pytest.mark.e2e

STACK = ComposeStack("discovery-cluster", profiles=("cluster",))
SERVERS = ("consul", "consul-2", "consul-3")


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    with STACK.up() as stack:
        yield stack


def management() -> consul.Consul:
    """A client with the management token the ACL bootstrap kept (only its one-shot mounts it)."""
    token = STACK.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "cat", "consul-acl",
                      "/admin/management.token").stdout.strip()
    return consul.Consul(host="127.0.0.1", port=STACK.consul, token=token)


def addresses() -> dict[str, str]:
    """Server address (ip:8300) -> compose service."""
    found = {}
    for service in SERVERS:
        for container in STACK.run("ps", "-q", service).stdout.split():
            ip = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                 container], check=True, capture_output=True, text=True).stdout.strip()
            found[f"{ip}:8300"] = service
    return found


def leader(ask: str = "consul") -> str | None:
    """The compose service that leads, as server `ask` sees it (/v1/status needs no token)."""
    answer = STACK.run("exec", "-T", ask, "curl", "-sf", "http://127.0.0.1:8500/v1/status/leader", check=False,
                       timeout=10)
    return addresses().get(answer.stdout.strip().strip('"')) if answer.returncode == 0 else None


def three_voters(admin: consul.Consul) -> bool:
    # py-consul's operator.raft_config() sends no token: ask with the management token ourselves.
    servers = admin.http.get(CB.json(), "/v1/operator/raft/configuration", headers=admin.prepare_headers())["Servers"]
    return len(servers) == 3 and all(s["Voter"] for s in servers) and leader() is not None


def watcher_metric(prefix: str) -> float:
    text = STACK.in_ha("import urllib.request; print(urllib.request.urlopen("
                       "'http://127.0.0.1:9105/metrics', timeout=2).read().decode())")
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(prefix))


def status() -> dict:
    return json.loads(STACK.in_ha("import urllib.request; print(urllib.request.urlopen("
                                  "'http://127.0.0.1:9105/status', timeout=2).read().decode())"))


def serving_matches(count: int) -> bool:
    ids = STACK.webapp_ids()
    live = {i["server"] for i in status()["services"]["webapp"]["instances"]}
    return len(ids) == count and live == ids == STACK.rendered_servers()


def test_leader_killed_blocking_queries_go_on_and_no_request_fails(stack, record):
    admin = management()
    # Autopilot makes a joining server a voter once it has been stable for 10 s.
    wait_until(lambda: three_voters(admin), "three voting servers with a leader", timeout=90)
    wait_until(lambda: serving_matches(2), "two web apps behind HAProxy", timeout=30)
    # The watcher and the registrator talk to `consul`; this case is about losing a leader they
    # do not talk to (losing their own server is "Consul unreachable", covered elsewhere).
    victim = wait_until(leader, "a leader", timeout=30)
    if victim == "consul":
        STACK.run("kill", "consul")
        wait_until(lambda: leader("consul-2") in ("consul-2", "consul-3"), "another leader", timeout=30)
        STACK.run("start", "consul")
        wait_until(lambda: three_voters(admin), "consul back as a voter", timeout=90)
        # The watcher lost its own server meanwhile, and a query it sent while `consul` was away
        # may still hang on from then: start it afresh (it adopts what HAProxy runs).
        STACK.run("exec", "-T", "ha", "supervisorctl", "restart", "watcher")
        wait_until(lambda: status()["last_error"] is None and serving_matches(2), "the watcher back", timeout=30)
        victim = wait_until(leader, "a leader", timeout=30)
    assert victim in ("consul-2", "consul-3"), f"the leader moved back to {victim} meanwhile"
    errors = watcher_metric("discovery_consul_errors_total")
    with Load(STACK.http) as load, NeverEmpty(STACK.serving_servers) as probe:
        time.sleep(1)
        STACK.run("kill", victim)  # SIGKILL: no leave, the two others must elect a new leader
        killed = time.monotonic()
        wait_until(lambda: leader() not in (None, victim), "a new leader", timeout=30)
        elected = time.monotonic() - killed
        # A change made through the new leader reaches HAProxy: the watcher's queries never stopped.
        STACK.run("up", "-d", "--no-recreate", "--no-deps", "--scale", "webapp=3", "webapp")
        wait_until(lambda: serving_matches(3), "a third web app served", timeout=30)
        time.sleep(1)
    probe.check()
    load.assert_no_failure()
    lost_queries = watcher_metric("discovery_consul_errors_total") - errors
    assert lost_queries == 0, "the watcher's blocking queries failed during the election"
    STACK.run("start", victim)
    wait_until(lambda: three_voters(admin), "the killed server back as a voter", timeout=90)
    assert http_get(STACK.http)[0] == 200
    record(f"Consul leader ({victim}) of 3 servers killed (-9), a web app added after the election",
           load.summary, str(load.failed),
           f"new leader in {elected:.1f} s; watcher: {lost_queries:.0f} failed Consul queries (stale reads)", "0")
