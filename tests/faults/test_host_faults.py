"""Faults under steady load on the system run as host processes (tests/faults/host.py): Consul
outages, a wiped and a restored Consul, the registrator and its Docker event stream broken,
bad templates, flapping, hung and failing back ends. Each case adds a row to the fault matrix
and asserts that HAProxy never had an empty backend while an instance was alive."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from discovery.haproxy.config import DEFAULT_TEMPLATE
from tests.faults.host import SERVICE, EmptyBackendProbe, HostStack, failing_backend, host_stack, webapp_image
from tests.processes import WebApps
from tests.support import Load, free_port, http_get, require, wait_until

pytestmark = pytest.mark.integration

OUTAGE = 30.0  # seconds Consul stays down (the figure)
FLAP_FOR, FLAP_EVERY = 30.0, 0.1
ZERO_FOR = 8.0  # seconds Consul's index reads 0


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    require("docker")
    client = docker.from_env()
    webapp_image()
    yield client
    client.close()


@pytest.fixture
def stack(tmp_path, docker_client) -> Iterator[HostStack]:
    with host_stack(tmp_path, docker_client) as stack:
        yield stack


def reloads_text(stack: HostStack, before: int) -> str:
    return f"{stack.watcher.reloads() - before} reloads"


@pytest.mark.parametrize("wiped", [False, True], ids=["data kept", "data wiped"])
def test_consul_stopped_for_30s_then_restarted(stack, record, wiped):
    reloads = stack.watcher.reloads()
    before = stack.ours()
    with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
        time.sleep(1)
        stack.consul.stop()
        if wiped:
            stack.consul.wipe()
        time.sleep(OUTAGE)
        # Unreachable is not "none": HAProxy still serves every instance.
        assert stack.served() == stack.ours_running()
        assert stack.status()["last_error"] is None
        back = time.monotonic()
        stack.consul.start()
        wait_until(stack.whole, "Consul, the registrations and HAProxy whole again", timeout=60)
        recovered = time.monotonic() - back
        time.sleep(1)
    probe.check()
    load.assert_no_failure()
    # Wiped: the registrator re-registers at once (it follows Consul), and the shrink guard holds
    # the moment Consul knows no instance. Kept: checks restart critical; the guard holds that too.
    assert stack.watcher.reloads() - reloads <= 1, "no reload storm"
    assert stack.ours() == before
    held = "large shrink held" in stack.watcher.log_text()
    record(f"Consul server stopped {OUTAGE:.0f} s, restarted with data {'wiped' if wiped else 'kept'}",
           load.summary, str(load.failed),
           f"{recovered:.1f} s after Consul started; {reloads_text(stack, reloads)}"
           f"{'; shrink held' if held else ''}", f"0 of {len(before)}")


@pytest.fixture
def short_waits(tmp_path, docker_client) -> Iterator[HostStack]:
    # Consul 1.8 does not wake blocking queries on a snapshot restore: the watcher sees the restored
    # index at its next wait timeout (55 s by default); 5 s keeps this case short.
    with host_stack(tmp_path, docker_client, watcher_flags=("--consul-wait", "5s")) as stack:
        yield stack


def test_consul_index_goes_backwards_on_snapshot_restore(short_waits, record, tmp_path):
    stack = short_waits
    snapshot = tmp_path / "consul.snap"
    stack.consul.snapshot("save", snapshot)
    stack.start_webapp()  # registered after the snapshot: the restore takes it out of the catalog
    wait_until(lambda: len(stack.ours_running()) == 4 and stack.whole(), "a fourth web app served", timeout=30)
    index = stack.status()["consul"]["queries"][f"service {SERVICE}"]["index"]
    before = stack.ours()
    with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
        time.sleep(0.5)
        stack.consul.snapshot("restore", snapshot)
        restored = time.monotonic()
        wait_until(lambda: stack.status()["consul"]["queries"][f"service {SERVICE}"]["index"] != index,
                   "the watcher to follow the restored index", timeout=30)
        wait_until(stack.whole, "the catalog, registrations and HAProxy whole again", timeout=60)
        recovered = time.monotonic() - restored
        time.sleep(0.5)
    probe.check()
    load.assert_no_failure()
    assert stack.ours() == before
    # The registrator's own short query (5 s) sees the index go back and registers everything
    # anew — when it answers before the leader's first write after the restore lifts the index
    # again; otherwise the catalog is made whole without it (asserted above). Which one happened
    # is reported, not asserted: it is a race inside Consul, not a bound of ours.
    noticed = "index went backwards" in stack.registrator_text()
    record("Consul index goes backwards (snapshot restore; 1 instance newer than the snapshot)", load.summary,
           str(load.failed), f"{recovered:.1f} s (registrator saw the index go back: {'yes' if noticed else 'no'})",
           "0 of 4")


def test_consul_index_stuck_at_zero_is_rate_limited_and_changes_get_through(tmp_path, docker_client, record):
    with host_stack(tmp_path, docker_client, index_proxy=True) as stack:
        assert stack.proxy is not None
        with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
            time.sleep(0.5)
            stack.proxy.zero = True
            started = time.monotonic()
            new = stack.start_webapp()  # a change while every answer says index 0
            wait_until(lambda: f"{SERVICE}-{new.id[:12]}" in stack.served(), "the new instance served", timeout=30)
            seen = time.monotonic() - started
            time.sleep(ZERO_FOR - seen)
            stack.proxy.zero = False
            per_second = stack.proxy.zeroed / (time.monotonic() - started)
            wait_until(stack.whole, "things whole again", timeout=30)
            time.sleep(0.5)
        probe.check()
    load.assert_no_failure()
    # Two queries (the catalog and the service), each pausing QueryRules.min_interval (50 ms) after an
    # answer that made no progress: 2 x 20 answers a second, a few more for the answers bringing
    # a change (not paused): not a busy loop. Measured 36-38 a second (results.json: 36): 45 is
    # the 40 of the pauses plus room for the answers that bring a change.
    assert per_second <= 45, f"{per_second:.0f} answers/s"
    record(f"Consul answers X-Consul-Index: 0 for {ZERO_FOR:.0f} s (proxy), a web app added meanwhile",
           load.summary, str(load.failed),
           f"new instance served in {seen:.1f} s; {per_second:.0f} queries/s while stuck (bound 45)", "0")


def test_registrator_killed_while_containers_start_and_stop(stack, record):
    client = stack.consul.client
    client.agent.service.register("foreign", service_id="foreign-1", port=1)
    client.agent.service.register("elsewhere", service_id="other-owner-1", port=2,
                                  meta={"managed-by": "discovery-registrator", "registrator": "someone-else"})
    with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
        time.sleep(0.5)
        stack.kill_registrator()  # SIGKILL: every event from here on is missed
        victims = stack.webapps()[:2]
        for victim in victims:
            victim.stop(timeout=5)
            stack.start_webapp()
        time.sleep(1)
        restarted = time.monotonic()
        stack.start_registrator()
        wait_until(stack.whole, "Consul to match the running containers exactly", timeout=60,
                   explain=stack.describe)
        recovered = time.monotonic() - restarted
        time.sleep(0.5)
    probe.check()
    load.assert_no_failure()
    services = client.agent.services()
    assert "foreign-1" in services and "other-owner-1" in services, "touched what it does not own"
    record("registrator killed (-9) while 2 containers stop and 2 start, then restarted", load.summary,
           str(load.failed), f"{recovered:.1f} s after the restart", "0 (foreign registrations untouched)")


class DockerProxy:
    """A TCP proxy to the Docker socket (socat), the registrator's only way to Docker in this case:
    killing it breaks the event stream without touching dockerd (which runs everyone's containers)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [require("socat"), f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
             "UNIX-CONNECT:/var/run/docker.sock"],
            start_new_session=True,  # its own process group: killing it cuts the forked connections too
        )
        wait_until(lambda: http_get(self.port, "/_ping")[0] == 200, "the Docker proxy")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_docker_event_stream_broken_resumes_without_missing_events(tmp_path, docker_client, record):
    proxy = DockerProxy()
    proxy.start()
    try:
        with host_stack(tmp_path, docker_client, docker_url=f"tcp://127.0.0.1:{proxy.port}") as stack:
            events = _registrator_events(stack)
            with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
                time.sleep(0.5)
                proxy.kill()
                stack.webapps()[0].stop(timeout=5)
                stack.start_webapp()
                time.sleep(2)
                resumed = time.monotonic()
                proxy.start()
                wait_until(stack.whole, "Consul to match the running containers again", timeout=60)
                recovered = time.monotonic() - resumed
                # Resumed from the last event seen: Docker replays the stop and the start it missed
                # (the stream may come back after the reconcile did: its retries back off).
                wait_until(lambda: (new := _registrator_events(stack)).get("start", 0) > events.get("start", 0)
                           and new.get("die", 0) > events.get("die", 0), "the missed events replayed", timeout=20)
                replayed = time.monotonic() - resumed
            log = stack.registrator_text()
    finally:
        proxy.kill()
    probe.check()
    load.assert_no_failure()
    assert "Docker event stream broken" in log
    record("Docker event stream broken (proxy to the Docker socket killed 2 s) while 1 container stops and 1 "
           "starts", load.summary, str(load.failed), f"{recovered:.1f} s after the stream is back; missed events "
           f"replayed after {replayed:.1f} s", "0")


def _registrator_events(stack: HostStack) -> dict[str, float]:
    text = http_get(stack.registrator_port, "/metrics")[2].decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("discovery_docker_events_total{"):
            name, _, value = line.rpartition(" ")
            counts[name.split('"')[1]] = float(value)
    return counts


def test_bad_template_invalid_config_and_unwritable_output_keep_the_last_good_config(tmp_path, docker_client,
                                                                                      record):
    chattr = require("chattr")  # as root, only the immutable flag makes a directory unwritable
    template = tmp_path / "template" / "mine.cfg.j2"
    template.parent.mkdir()
    shutil.copy(DEFAULT_TEMPLATE, template)
    faults = {
        "TemplateError": ("a broken template (Jinja2 syntax)",
                          lambda: template.write_text(template.read_text() + "\n{% for broken %}\n")),
        "ConfigInvalid": ("a template rendering an invalid config",
                          lambda: template.write_text(template.read_text() + "\nbackend x\n    no-such-directive\n")),
        "PermissionError": ("the output directory unwritable (chattr +i)",
                            lambda: subprocess.run([chattr, "+i", str(tmp_path)], check=True)),
    }
    with host_stack(tmp_path, docker_client, watcher_flags=("--template", str(template))) as stack:
        for cause, (what, fault) in faults.items():
            metric = f'discovery_apply_errors_total{{cause="{cause}"}}'
            # The previous case's fix may have left a server draining; its end rewrites the file.
            # Wait for it (at most --drain-timeout, 30 s), so that the snapshot is of a settled
            # config and not one a finishing drain is about to change (seen once in CI).
            wait_until(lambda: not stack.draining() and " disabled" not in stack.watcher.config,
                       "the previous case's drains finished", timeout=40)
            good, errors, served = stack.watcher.config, stack.metric(metric), stack.served()
            with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
                try:
                    fault()
                    stack.webapps()[0].stop(timeout=5)  # a change to apply
                    stack.start_webapp()
                    wait_until(lambda m=metric, e=errors: stack.metric(m) > e, f"the {cause} counted", timeout=20)
                    assert f"not applied, keeping the last good config ({cause})" in stack.watcher.log_text()
                    assert stack.watcher.config == good and stack.served() == served
                finally:
                    subprocess.run([chattr, "-i", str(tmp_path)], check=False)
                    shutil.copy(DEFAULT_TEMPLATE, template)
                fixed = time.monotonic()
                wait_until(lambda: len(stack.ours_running()) == 3 and stack.whole(), "the fix applied", timeout=30)
                recovered = time.monotonic() - fixed
            probe.check()
            load.assert_no_failure()
            record(f"{what} while containers change", load.summary, str(load.failed),
                   f"{recovered:.1f} s after the fix; last good config kept, {metric} +1", "0")


def test_backend_flapping_every_100ms_for_30s_is_bounded(stack, record):
    apps = WebApps()
    try:
        port = apps.start("flappy")
        client = stack.consul.client
        client.agent.service.register(SERVICE, service_id="web-flappy", address="127.0.0.1", port=port,
                                      tags=[stack.prefix], check={"TTL": "30s", "Status": "passing"})
        wait_until(lambda: "web-flappy" in stack.served(), "the flapping instance served")
        reloads = stack.watcher.reloads()
        changes = stack.metric('discovery_changes_applied_total{method="runtime"}')
        flips = 0
        with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
            ends = time.monotonic() + FLAP_FOR
            while time.monotonic() < ends:
                (client.agent.check.ttl_fail if flips % 2 == 0 else client.agent.check.ttl_pass)("service:web-flappy")
                flips += 1
                time.sleep(FLAP_EVERY)
            client.agent.check.ttl_pass("service:web-flappy")
            settled = time.monotonic()
            wait_until(lambda: stack.served() == stack.ours_running() | {"web-flappy"}, "things to settle")
            recovered = time.monotonic() - settled
        applied = stack.metric('discovery_changes_applied_total{method="runtime"}') - changes
    finally:
        apps.stop_all()
    probe.check()
    load.assert_no_failure()
    assert stack.watcher.reloads() == reloads, "a flapping instance must never reload HAProxy"
    # Changes are batched: at most one apply per --wait-min (100 ms) of quiet, whatever Consul does.
    bound = FLAP_FOR / 0.1
    assert applied <= bound, f"{applied} changes applied for {flips} flips"
    record(f"one of 4 instances flapping every {FLAP_EVERY * 1000:.0f} ms for {FLAP_FOR:.0f} s ({flips} flips)",
           load.summary, str(load.failed),
           f"{recovered:.1f} s to settle; {applied:.0f} Runtime API changes (bound {bound:.0f}), 0 reloads", "0")


def test_hung_backend_is_taken_out_by_health_checks(stack, record):
    hung = stack.webapps()[0]
    name = f"{SERVICE}-{hung.id[:12]}"
    with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
        time.sleep(0.5)
        # Frozen: the kernel still accepts connections, nothing ever answers. Not `docker pause`:
        # that is an event the registrator acts on at once; a hang sends no event at all.
        webapp_process(hung, signal.SIGSTOP)
        paused = time.monotonic()
        wait_until(lambda: name not in stack.served(), "the hung instance to be taken out", timeout=15)
        out = time.monotonic() - paused
        time.sleep(3)
        late = [t for t in load.failed_at if t > paused + out + 10.5]  # past the client's 10 s timeout
        webapp_process(hung, signal.SIGCONT)
        wait_until(lambda: name in stack.served(), "the instance back once it answers", timeout=15)
        time.sleep(0.5)
    probe.check()
    # Only requests already sent to it before it was taken out can fail (at the client's 10 s
    # timeout): at most one per load client.
    assert load.failed <= load.clients, (load.outcomes, load.errors)
    assert not late
    # Two failed checks (`fall 2`, `inter 2s`) or Consul's check, whichever first: measured 1.2-2.0 s
    # (results.json: 1.8 s at 5f873ae, 1.5 s at eb68bb5); 5 s is 2.5x the slowest.
    assert out < 5
    record("one of 3 instances hangs (SIGSTOP, no Docker event), then resumes (SIGCONT)", load.summary,
           f"{load.failed} (requests already on it; bound {load.clients})",
           f"{out:.1f} s to take it out", "0")


def webapp_process(container, sent: signal.Signals) -> None:
    """Signal the web app process of a container (the child of its init), from the host."""
    container.reload()
    init = container.attrs["State"]["Pid"]
    for child in Path(f"/proc/{init}/task/{init}/children").read_text().split():
        os.kill(int(child), sent)


def test_backend_answering_500_is_taken_out_by_health_checks(stack, record, tmp_path):
    with failing_backend(tmp_path) as (port, flag):
        stack.consul.register("web-failing", SERVICE, port, tags=(stack.prefix,), timeout="1s")
        wait_until(lambda: "web-failing" in stack.served(), "the soon-failing instance served")
        with Load(stack.watcher.http_port) as load, EmptyBackendProbe(stack.watcher) as probe:
            time.sleep(0.5)
            flag.touch()
            failing = time.monotonic()
            wait_until(lambda: "web-failing" not in stack.served(), "the failing instance taken out", timeout=15)
            out = time.monotonic() - failing
            time.sleep(2)
    probe.check()
    # Consul checks every 500 ms and the watcher follows within milliseconds: measured 0.1-0.8 s
    # (results.json: 0.4 s at 5f873ae, 0.5 s at eb68bb5); 3 s is ~4x the slowest.
    assert out < 3, "Consul checks every 500 ms; the watcher follows within milliseconds"
    assert all(t <= failing + out + 0.5 for t in load.failed_at), "failures after it was taken out"
    # The failures are the requests round robin gave it (1 in 4) while it was in rotation, plus
    # those in flight: measured 12-373 (results.json: 158 at 1,540/s, out in 0.4 s, at 5f873ae; 184
    # at 1,762/s, out in 0.5 s, at eb68bb5). The bound adds 1 s to the time in rotation (539 and
    # 661 for those two runs: over 3x what was measured), as the average rate may understate the
    # rate while fast 500s were answered.
    bound = load.rate / 4 * (out + 1.0)
    assert load.failed <= bound, f"{load.failed} failed, more than the 1 in 4 of {out + 1.0:.1f} s ({bound:.0f})"
    record("one of 4 instances starts answering 500 (and its health check too)", load.summary,
           f"{load.failed} (500s sent to it before it was taken out)", f"{out:.1f} s to take it out", "0")
