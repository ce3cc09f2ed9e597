"""The watcher against a real Consul agent and a real HAProxy, on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discovery.haproxy.config import DEFAULT_TEMPLATE
from tests.support import Load, SlowRequest, get_json, http_get, wait_until

pytestmark = pytest.mark.integration


def test_membership_changes_use_the_runtime_api_without_reload_or_failed_request(consul_agent, webapps,
                                                                                  start_watcher):
    one, two = webapps.start("one"), webapps.start("two")
    consul_agent.register("web-one", "web", one)
    watcher = start_watcher()
    wait_until(lambda: watcher.tags_served() == {"one"}, "HAProxy to route to instance one")
    reloads = watcher.reloads()

    with Load(watcher.http_port) as load:
        consul_agent.register("web-two", "web", two)
        wait_until(lambda: watcher.tags_served() == {"one", "two"}, "instance two to join")
        assert watcher.file_servers() == watcher.runtime_servers()
        consul_agent.deregister("web-one")
        wait_until(lambda: watcher.tags_served() == {"two"}, "traffic to stop reaching instance one")
        wait_until(lambda: "removed web-one from be_web" in watcher.log_text(), "instance one to be removed")
        assert watcher.file_servers() == watcher.runtime_servers() == {("be_web", "web-two", f"127.0.0.1:{two}")}
    load.assert_no_failure()
    assert watcher.reloads() == reloads, "a membership change must not reload HAProxy"
    log = watcher.log_text()
    assert "applied +web-two 127.0.0.1" in log and "(Runtime API, no reload;" in log


def test_a_removed_server_drains_its_requests_before_it_is_deleted(consul_agent, webapps, start_watcher):
    consul_agent.register("web-slow", "web", webapps.start("slow"))
    watcher = start_watcher()
    wait_until(lambda: watcher.tags_served() == {"slow"}, "the first instance served")
    slow = SlowRequest(watcher.http_port, 3000, lambda: watcher.sessions("be_web", "web-slow") > 0)
    other = webapps.start("other")
    consul_agent.register("web-other", "web", other)
    wait_until(lambda: "other" in watcher.tags_served(), "the second instance served")

    consul_agent.deregister("web-slow")
    wait_until(lambda: watcher.admin_state("web-slow") & 0x08, "web-slow to drain (admin state DRAIN)")
    assert "server web-slow" in watcher.config and " disabled" in watcher.config  # listed, draining
    assert watcher.tags_served() == {"other"}
    assert "removed web-slow" not in watcher.log_text()  # its request is still running
    assert slow.result() == 200  # and it finishes on the draining server
    wait_until(lambda: "removed web-slow from be_web" in watcher.log_text(), "web-slow to be removed")
    assert watcher.file_servers() == watcher.runtime_servers() == {("be_web", "web-other", f"127.0.0.1:{other}")}


def test_a_new_service_is_one_seamless_reload(consul_agent, webapps, start_watcher):
    consul_agent.register("web-one", "web", webapps.start("one"))
    watcher = start_watcher()
    wait_until(lambda: watcher.tags_served() == {"one"}, "the first service")
    reloads = watcher.reloads()
    with Load(watcher.http_port) as load:
        consul_agent.register("api-1", "api", webapps.start("api"), tags=("lb", "lb.host=api.local"))
        wait_until(lambda: get_json(watcher.http_port, headers={"Host": "api.local"})["tag"] == "api",
                   "the new service to be routed")
    assert watcher.reloads() == reloads + 1
    load.assert_no_failure()
    assert watcher.file_servers() == watcher.runtime_servers()


def test_only_passing_instances_are_routed(consul_agent, webapps, start_watcher):
    port = webapps.start("alive")
    consul_agent.register("web-alive", "web", port)
    consul_agent.register("web-dead", "web", 1)  # its health check can never pass
    watcher = start_watcher()
    wait_until(lambda: watcher.server_lines() == ["web-alive"], "the passing instance in the config")
    assert "web-dead" not in watcher.config


def test_a_service_with_no_passing_instance_answers_503(consul_agent, start_watcher):
    consul_agent.register("web-dead", "web", 1)
    watcher = start_watcher()
    # HAProxy's own 503 for a backend without servers, not the "no service" answer of a config
    # that has no backend for the service at all.
    def empty_backend_answers() -> bool:
        status, _, body = http_get(watcher.http_port)
        return status == 503 and b"No server is available" in body

    wait_until(empty_backend_answers, "the empty backend to answer 503")
    assert "backend be_web" in watcher.config


def test_routes_by_host(consul_agent, webapps, start_watcher):
    consul_agent.register("site-1", "site", webapps.start("site"), tags=("lb", "lb.default"))
    consul_agent.register("api-1", "api", webapps.start("api"), tags=("lb", "lb.route=api.local/"))
    consul_agent.register("admin-1", "admin", webapps.start("admin"), tags=("lb", "lb.host=Admin.Local"))
    watcher = start_watcher()
    wait_until(lambda: len(watcher.server_lines()) == 3, "three services in the config")

    def tag(host: str) -> str:
        return str(get_json(watcher.http_port, "/", headers={"Host": host})["tag"])

    # Instances pass their checks one by one, and the file is written just before each reload:
    # wait for HAProxy itself to route all three.
    wait_until(lambda: (tag("example.org"), tag("api.local"), tag("admin.local:8080")) == ("site", "api", "admin"),
               "routing by host (any port, any case) with the default service for other hosts")


@pytest.fixture
def own_template(consul_agent, webapps, start_watcher, tmp_path):
    """A watcher on a copy of the shipped template, serving instance `one` from a good config."""
    template = tmp_path / "mine.cfg.j2"
    shutil.copy(DEFAULT_TEMPLATE, template)
    consul_agent.register("web-one", "web", webapps.start("one"))
    watcher = start_watcher("--template", str(template))
    wait_until(lambda: watcher.server_lines() == ["web-one"], "the first config")
    return template, watcher


def test_broken_template_keeps_last_good_config_and_says_why(own_template, consul_agent, webapps):
    template, watcher = own_template
    good = watcher.config
    template.write_text(template.read_text() + "\n{% for broken %}\n")
    consul_agent.register("web-two", "web", webapps.start("two"))
    wait_until(lambda: "not applied, keeping the last good config (TemplateError)" in watcher.log_text(),
               "the watcher to report the broken template")
    assert f"{template}:" in watcher.log_text()  # names the file and line
    assert watcher.config == good
    assert watcher.tags_served() == {"one"}  # HAProxy still serves the last good config

    template.write_text(DEFAULT_TEMPLATE.read_text() + "\n# fixed\n")
    wait_until(lambda: watcher.server_lines() == ["web-one", "web-two"], "the fixed template to be applied")


def test_template_rendering_an_invalid_config_is_rejected(own_template):
    template, watcher = own_template
    good = watcher.config
    template.write_text(template.read_text() + "\nbackend broken\n    no-such-directive here\n")
    wait_until(lambda: "not applied, keeping the last good config (ConfigInvalid)" in watcher.log_text(),
               "haproxy -c to reject the candidate")
    assert watcher.config == good


def test_dry_run_prints_the_diff_and_once_writes(consul_agent, webapps, tmp_path):
    consul_agent.register("web-one", "web", webapps.start("one"))
    consul_agent.wait_passing("web", 1)
    output = tmp_path / "haproxy.cfg"
    output.write_text("# old\n")
    base = [sys.executable, "-m", "discovery.watch", "--consul", consul_agent.address, "--output", str(output),
            "--master-socket", str(tmp_path / "none.sock"), "--runtime-socket", str(tmp_path / "admin.sock")]
    dry = subprocess.run([*base, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-# old" in dry.stdout and "+    server web-one 127.0.0.1:" in dry.stdout
    assert output.read_text() == "# old\n"

    once = subprocess.run([*base, "--once"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert "server web-one 127.0.0.1:" in output.read_text()


def test_once_without_consul_exits_4(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "discovery.watch", "--consul", "http://127.0.0.1:1", "--output",
         str(tmp_path / "h.cfg"), "--once", "--once-timeout", "1s"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 4
    assert "no complete answer from Consul" in result.stderr


def prometheus_samples(text: str) -> dict[str, float]:
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))}


def test_metrics_and_status_expose_what_the_watcher_did(consul_agent, webapps, start_watcher):
    consul_agent.register("web-one", "web", webapps.start("one"))
    watcher = start_watcher()
    wait_until(lambda: watcher.tags_served() == {"one"}, "the first config")
    consul_agent.register("web-two", "web", webapps.start("two"))
    wait_until(lambda: watcher.tags_served() == {"one", "two"}, "a membership change")

    status = get_json(watcher.status_port, "/status")
    assert status["services"]["web"]["instances"] == [
        {"server": "web-one", "address": f"127.0.0.1:{webapps.processes['one'][0]}"},
        {"server": "web-two", "address": f"127.0.0.1:{webapps.processes['two'][0]}"},
    ]
    assert status["last_apply"]["method"] == "runtime" and "+web-two" in status["last_apply"]["what"]
    assert status["last_error"] is None and status["consul"]["complete"]
    assert status["consul"]["queries"]["service web"]["index"] > 0

    metrics = prometheus_samples(http_get(watcher.status_port, "/metrics")[2].decode())
    runtime, reloads = (metrics[f'discovery_changes_applied_total{{method="{m}"}}'] for m in ("runtime", "reload"))
    assert runtime >= 1 and reloads >= 1  # web-two by the Runtime API, the new service by a reload
    assert metrics['discovery_apply_seconds_count{method="runtime"}'] == runtime
    assert metrics['discovery_instances{service="web"}'] == 2
    assert metrics['discovery_consul_index{query="service web"}'] > 0
    # Not a speed bound: a blocking query answers at least once per its wait (55 s here, plus Consul's
    # jitter of up to 1/16 of it), so an answer older than 60 s means the watcher stopped asking.
    assert time.time() - metrics['discovery_consul_last_answer_timestamp_seconds{query="catalog"}'] < 60
    _, _, page = http_get(watcher.stats_port, "/metrics", headers=watcher.stats_credentials())  # HAProxy's own
    assert b"haproxy_backend_active_servers" in page


def test_the_stats_page_needs_the_generated_credentials(consul_agent, start_watcher):
    watcher = start_watcher()
    password_file = watcher.sockets / "stats-password"
    assert password_file.stat().st_mode & 0o077 == 0  # owner only
    assert watcher.output.stat().st_mode & 0o007 == 0  # the config holds it too: not world-readable
    for path in ("/", "/metrics"):
        assert http_get(watcher.stats_port, path)[0] == 401
        assert http_get(watcher.stats_port, path, headers=watcher.stats_credentials())[0] == 200
    assert password_file.read_text().strip() not in watcher.log_text()


def test_a_busy_metrics_address_is_a_clear_fatal_error(consul_agent, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "discovery.watch", "--consul", consul_agent.address, "--output",
             str(tmp_path / "h.cfg"), "--listen", f"127.0.0.1:{port}", "--stats-no-auth"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_a_large_shrink_is_held_and_forgotten_when_consul_lists_the_instances_again(consul_agent, webapps,
                                                                                    start_watcher):
    ports = {tag: webapps.start(tag) for tag in ("one", "two", "three")}
    for tag, port in ports.items():
        consul_agent.register(f"web-{tag}", "web", port)
    watcher = start_watcher("--shrink-hold", "3s")
    wait_until(lambda: len(watcher.runtime_servers()) == 3, "three servers")
    servers = watcher.runtime_servers()
    with Load(watcher.http_port) as load:
        for tag in ("one", "two"):  # 3 → 1: what a wiped Consul looks like for a moment
            consul_agent.deregister(f"web-{tag}")
        wait_until(lambda: "large shrink held" in watcher.log_text(), "the shrink to be held")
        # Up to half may go at once (the first deregistration may have been applied alone).
        assert len(watcher.runtime_servers()) >= 2
        assert get_json(watcher.status_port, "/status")["held_shrinks"] == ["web"]
        for tag in ("one", "two"):
            consul_agent.register(f"web-{tag}", "web", ports[tag])
        wait_until(lambda: "held shrink over, Consul lists its instances again" in watcher.log_text(),
                   "the hold to end")
        wait_until(lambda: watcher.runtime_servers() == servers, "all three served again")
        consul_agent.deregister("web-one")  # one at a time: a large shrink cannot pass in small steps
        time.sleep(0.5)
        consul_agent.deregister("web-two")
        wait_until(lambda: "held shrink applied, Consul kept saying it" in watcher.log_text(), "the hold to expire",
                   timeout=10)
        wait_until(lambda: {name for _, name, _ in watcher.runtime_servers()} == {"web-three"}, "the shrink applied")
    load.assert_no_failure()
