"""End to end: the real compose.yaml on real Docker, through port 80 and the stats page.

One stack for the module, driven through the lab's scenario in order: two web apps, scale to
five, stop one, scale to three, kill one, then lose the registrator while containers come and go.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator

import consul
import pytest
from consul.exceptions import ACLPermissionDenied

from tests.stack import ComposeStack
from tests.support import Load, http_get, wait_until

pytestmark = pytest.mark.e2e

STACK = ComposeStack("discovery-e2e")
compose = STACK.run
webapp_ids = STACK.webapp_ids
rendered_servers = STACK.rendered_servers
HTTP, STATS, CONSUL = STACK.http, STACK.stats, STACK.consul  # free loopback ports


@pytest.fixture(scope="module")
def stack() -> Iterator[None]:
    with STACK.up():
        yield


def hosts_answering(requests: int = 20) -> set[str]:
    hosts = set()
    for _ in range(requests):
        status, _, body = http_get(HTTP)
        assert status == 200, body[:200]
        hosts.add(json.loads(body)["host"])
    return hosts


def converged(expected_count: int) -> bool:
    ids = webapp_ids()
    return len(ids) == expected_count and rendered_servers() == ids and len(hosts_answering()) == expected_count


def test_two_web_apps_answer_in_turn(stack):
    wait_until(lambda: converged(2), "two web apps behind port 80", timeout=30)
    answers = [http_get(HTTP) for _ in range(4)]
    bodies = [json.loads(body) for _, _, body in answers]
    assert {b["host"] for b in bodies[:2]} == {b["host"] for b in bodies} and bodies[0]["host"] != bodies[1]["host"]
    for (_, headers, _), body in zip(answers, bodies, strict=True):
        assert set(body) == {"hello", "host", "ip", "tag", "sessionViews", "id"} and body["hello"] == "world!"
        assert headers["x-backend-host"] == body["host"] and "set-cookie" in headers


def test_watcher_status_matches_the_running_web_apps(stack):
    status = json.loads(STACK.in_ha("import urllib.request; print(urllib.request.urlopen("
                                    "'http://127.0.0.1:9105/status').read().decode())"))
    assert {i["server"] for i in status["services"]["webapp"]["instances"]} == webapp_ids()
    assert status["services"]["webapp"]["default"] and status["last_error"] is None


def test_registrator_reaches_docker_only_through_the_read_only_proxy(stack):
    registrator = compose("ps", "-q", "registrator").stdout.split()[0]
    mounts = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Mounts}}", registrator],
                                       check=True, capture_output=True, text=True).stdout)
    assert not any("docker.sock" in m.get("Source", "") for m in mounts)
    user = subprocess.run(["docker", "inspect", "-f", "{{.Config.User}}", registrator], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert user not in ("", "root", "0")
    probe = ("import urllib.request, urllib.error\n"
             "def status(method, path):\n"
             "    request = urllib.request.Request('http://socket-proxy:2375' + path, method=method)\n"
             "    try:\n"
             "        return urllib.request.urlopen(request, timeout=5).status\n"
             "    except urllib.error.HTTPError as error:\n"
             "        return error.code\n"
             "print(status('GET', '/containers/json'), status('POST', '/containers/create'),"
             " status('GET', '/secrets'), status('DELETE', '/containers/x'))")
    answers = compose("exec", "-T", "registrator", "python3", "-c", probe).stdout.split()
    assert answers == ["200", "403", "403", "403"]


def test_consul_enforces_acls_with_one_least_privilege_token_per_component(stack):
    anonymous = consul.Consul(host="127.0.0.1", port=CONSUL)
    registrator = consul.Consul(host="127.0.0.1", port=CONSUL, token=STACK.token("registrator"))
    watcher = consul.Consul(host="127.0.0.1", port=CONSUL, token=STACK.token("ha"))
    assert anonymous.catalog.services()[1] == {} and anonymous.catalog.nodes()[1] == []
    assert set(watcher.catalog.services()[1]) == {"consul", "webapp"}
    with pytest.raises(ACLPermissionDenied):
        registrator.kv.get("any/key")
    with pytest.raises(ACLPermissionDenied):
        registrator.agent.service.register("not-webapp", service_id="intruder", port=80)
    with pytest.raises(ACLPermissionDenied):
        watcher.agent.service.register("webapp", service_id="intruder", port=80)
    with pytest.raises(ACLPermissionDenied):
        watcher.kv.put("any/key", "x")
    # Gossip is encrypted with the key made at first start.
    assert "Encrypt: Gossip: true" in compose("logs", "--no-color", "consul").stdout


def test_stats_page_lists_the_web_apps(stack):
    assert http_get(STATS, "/")[0] == 401  # no default password: one was generated at first start
    password = compose("exec", "-T", "ha", "cat", "/etc/haproxy/stats-password").stdout.strip()
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    status, _, page = http_get(STATS, "/", headers={"Authorization": f"Basic {basic}"})
    assert status == 200
    listed = set(re.findall(rb"webapp-[0-9a-f]{12}", page))
    assert {name.encode() for name in webapp_ids()} == listed


def test_scale_to_five_serves_within_five_seconds(stack):
    compose("up", "-d", "--no-recreate", "--scale", "webapp=5", "webapp")
    started = time.monotonic()
    wait_until(lambda: converged(5), "five web apps behind port 80", timeout=5)
    print(f"five web apps served {time.monotonic() - started:.2f}s after `up --scale` returned")


def test_stopping_one_loses_no_request(stack):
    victim = compose("ps", "-q", "webapp").stdout.split()[0]
    with Load(HTTP) as load:
        subprocess.run(["docker", "stop", victim], check=True, capture_output=True)
        wait_until(lambda: converged(4), "four web apps after a stop", timeout=10)
    load.assert_no_failure()


def test_scale_down_to_three_loses_no_request(stack):
    compose("rm", "-f", check=False)  # the stopped one, so that --scale counts only live ones
    with Load(HTTP) as load:
        compose("up", "-d", "--no-recreate", "--scale", "webapp=3", "webapp")
        wait_until(lambda: converged(3), "three web apps", timeout=10)
    load.assert_no_failure()


def test_killing_one_loses_no_idempotent_request(stack):
    victim = compose("ps", "-q", "webapp").stdout.split()[0]
    with Load(HTTP) as load:
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        wait_until(lambda: converged(2), "two web apps after a kill", timeout=10)
    load.assert_no_failure()


def test_registrator_restart_reconciles_consul_with_running_containers(stack):
    compose("kill", "registrator")
    compose("rm", "-f", check=False)
    compose("up", "-d", "--no-recreate", "--no-deps", "--scale", "webapp=4", "webapp")
    subprocess.run(["docker", "stop", "-t", "1", compose("ps", "-q", "webapp").stdout.split()[0]], check=True,
                   capture_output=True)
    compose("up", "-d", "--no-deps", "registrator")
    client = consul.Consul(host="127.0.0.1", port=CONSUL, token=STACK.token("ha"))

    def consul_matches() -> bool:
        ours = {sid for sid, s in client.agent.services().items()
                if (s.get("Meta") or {}).get("managed-by") == "discovery-registrator"}
        return ours == webapp_ids() and len(ours) == 3

    wait_until(consul_matches, "Consul to match the running containers exactly", timeout=30)
    wait_until(lambda: converged(3), "HAProxy to follow", timeout=10)
