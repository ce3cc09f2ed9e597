"""The HAProxy shell against a real HAProxy in master-worker mode."""

from __future__ import annotations

import os
import socket
import time

import pytest

from discovery import metrics
from discovery.files import write_atomic
from discovery.haproxy.binary import ManagedHAProxy, validate
from discovery.haproxy.config import DEFAULT_TEMPLATE, Renderer, RenderSettings
from discovery.haproxy.errors import ConfigInvalid, ReloadFailed
from discovery.haproxy.sockets import HAProxySockets, MasterCLI
from discovery.model import DesiredState, Instance, Service
from discovery.watch.applier import Applier, ApplySettings
from discovery.watch.guard import ShrinkGuard
from tests.support import free_port, http_get, require

pytestmark = pytest.mark.integration


def config_text(tmp_path, http_port, stats_port, servers=()):
    state = DesiredState((Service("web", tuple(servers), is_default=True),))
    settings = RenderSettings(http_bind=f"127.0.0.1:{http_port}", stats_bind=f"127.0.0.1:{stats_port}",
                              runtime_socket=str(tmp_path / "admin.sock"))
    return Renderer().render(state, settings)


@pytest.fixture
async def haproxy(tmp_path):
    binary = require("haproxy")
    ports = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    write_atomic(config, config_text(tmp_path, *ports))
    managed = ManagedHAProxy(binary, config, tmp_path / "master.sock")
    await managed.start()
    try:
        yield managed, ports
    finally:
        await managed.stop()


async def test_validate_accepts_rendered_config_and_rejects_garbage(tmp_path):
    await validate(config_text(tmp_path, free_port(), free_port()), require("haproxy"), tmp_path)
    with pytest.raises(ConfigInvalid, match="no-such-keyword"):
        await validate("global\n    no-such-keyword\n", "haproxy", tmp_path)
    assert list(tmp_path.glob("*.cfg")) == []  # candidates never linger


async def test_reload_starts_a_new_worker_that_serves_the_new_config(haproxy, tmp_path):
    managed, (http_port, stats_port) = haproxy
    cli = MasterCLI(managed.master_socket)
    before = await cli.processes()
    server = Instance("web", "web-1", "127.0.0.1", free_port())
    write_atomic(managed.config, config_text(tmp_path, http_port, stats_port, [server]))
    await cli.reload()
    after = await cli.processes()
    assert after.master_reloads == before.master_reloads + 1
    assert {pid for pid, _ in after.workers}.isdisjoint({pid for pid, _ in before.workers})
    _, _, stats = http_get(stats_port, "/;csv")
    assert b"web-1" in stats


async def test_a_reload_haproxy_refuses_raises_reload_failed(haproxy, tmp_path):
    managed, (http_port, stats_port) = haproxy
    with socket.socket() as taken:  # valid for `haproxy -c`, but the new worker cannot bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        write_atomic(managed.config, config_text(tmp_path, busy, stats_port))
        with pytest.raises(ReloadFailed):
            await MasterCLI(managed.master_socket).reload()
    status, _, _ = http_get(http_port)  # the previous workers still serve
    assert status == 503


async def test_a_restarted_watcher_adopts_the_file_only_when_haproxy_runs_its_servers(haproxy, tmp_path):
    managed, (http_port, stats_port) = haproxy
    settings = ApplySettings(DEFAULT_TEMPLATE, managed.config, render=RenderSettings(
        http_bind=f"127.0.0.1:{http_port}", stats_bind=f"127.0.0.1:{stats_port}",
        runtime_socket=str(tmp_path / "admin.sock")))
    adopting = Applier(settings, HAProxySockets.at(managed.master_socket, tmp_path / "admin.sock"))
    await adopting.attach()
    assert adopting.loaded == managed.config.read_text()  # HAProxy runs what the file says: no reload
    # A watcher that died after writing a new file but before telling HAProxy: the file lists a
    # server HAProxy does not run, so the next watcher must not take the file as loaded.
    write_atomic(managed.config, config_text(tmp_path, http_port, stats_port,
                                             [Instance("web", "web-1", "127.0.0.1", free_port())]))
    restarted = Applier(settings, HAProxySockets.at(managed.master_socket, tmp_path / "admin.sock"))
    await restarted.attach()
    assert restarted.loaded is None


async def test_a_restarted_watcher_remembers_what_haproxy_serves_for_the_shrink_guard(haproxy, tmp_path):
    managed, (http_port, stats_port) = haproxy
    servers = [Instance("web", f"web-{n}", "127.0.0.1", free_port()) for n in (1, 2, 3)]
    write_atomic(managed.config, config_text(tmp_path, http_port, stats_port, servers))
    await MasterCLI(managed.master_socket).reload()
    settings = ApplySettings(DEFAULT_TEMPLATE, managed.config, render=RenderSettings(
        http_bind=f"127.0.0.1:{http_port}", stats_bind=f"127.0.0.1:{stats_port}",
        runtime_socket=str(tmp_path / "admin.sock")))
    restarted = Applier(settings, HAProxySockets.at(managed.master_socket, tmp_path / "admin.sock"))
    await restarted.attach()
    assert restarted.served == DesiredState((Service("web", tuple(servers), is_default=True),))
    # Consul's first answer after the restart says "none" (wiped, say): held, not applied.
    verdict = ShrinkGuard(max_shrink=0.5, hold=15).check(restarted.served, DesiredState(), now=0)
    assert verdict.held and verdict.state == restarted.served


def applier_for(managed, tmp_path, ports, template=DEFAULT_TEMPLATE):
    http_port, stats_port = ports
    settings = ApplySettings(template, managed.config, render=RenderSettings(
        http_bind=f"127.0.0.1:{http_port}", stats_bind=f"127.0.0.1:{stats_port}",
        runtime_socket=str(tmp_path / "admin.sock")))
    return Applier(settings, HAProxySockets.at(managed.master_socket, tmp_path / "admin.sock"))


def post_check_errors() -> float:
    return metrics.APPLY_ERRORS.labels("post-check")._value.get()


async def test_a_runtime_change_is_validated_after_it_is_applied_not_before(haproxy, tmp_path):
    managed, ports = haproxy
    applier = applier_for(managed, tmp_path, ports)
    await applier.attach()
    web = [Instance("web", f"web-{n}", "127.0.0.1", free_port()) for n in (1, 2)]
    await applier.apply(DesiredState((Service("web", tuple(web[:1]), is_default=True),)), ["first"])
    outcome = await applier.apply(DesiredState((Service("web", tuple(web), is_default=True),)), ["one more"])
    assert outcome.action == "runtime"
    phases = applier.last_apply["timeline"]["phases_ms"]
    assert list(phases) == ["rendered", "written", "haproxy"] and all(ms >= 0 for ms in phases.values())
    # Left to the post-check, off the fast path: a file HAProxy would refuse is said there.
    assert applier.post_check.pending.is_set()
    before = post_check_errors()
    await applier.post_check.check()
    assert post_check_errors() == before
    applier.loaded = "this is not a config\n"
    await applier.post_check.check()
    assert post_check_errors() == before + 1


async def test_a_template_edited_between_two_runtime_changes_makes_the_second_a_reload(haproxy, tmp_path):
    managed, ports = haproxy
    template = tmp_path / "mine.cfg.j2"
    template.write_text(DEFAULT_TEMPLATE.read_text())
    applier = applier_for(managed, tmp_path, ports, template)
    await applier.attach()
    web = [Instance("web", f"web-{n}", "127.0.0.1", free_port()) for n in (1, 2, 3)]
    states = [DesiredState((Service("web", tuple(web[:n]), is_default=True),)) for n in (1, 2, 3)]
    await applier.apply(states[0], ["first"])
    assert (await applier.apply(states[1], ["one more"])).action == "runtime"  # the stamp says: same template
    template.write_text(template.read_text() + "# edited\n")
    os.utime(template, ns=(time.time_ns() + 10**9,) * 2)  # a later stamp even on a coarse clock
    assert (await applier.apply(states[2], ["and another"])).action == "reload"
    assert managed.config.read_text().endswith("# edited\n")


async def test_an_edit_to_an_included_template_alone_makes_the_next_change_a_reload(haproxy, tmp_path):
    managed, ports = haproxy
    (tmp_path / "part.cfg.j2").write_text(DEFAULT_TEMPLATE.read_text())
    template = tmp_path / "mine.cfg.j2"
    template.write_text('{% include "part.cfg.j2" %}')
    applier = applier_for(managed, tmp_path, ports, template)
    await applier.attach()
    web = [Instance("web", f"web-{n}", "127.0.0.1", free_port()) for n in (1, 2, 3, 4)]
    states = [DesiredState((Service("web", tuple(web[:n]), is_default=True),)) for n in (1, 2, 3, 4)]
    await applier.apply(states[0], ["first"])
    await applier.apply(states[1], ["the include now known to the stamp"])
    assert (await applier.apply(states[2], ["one more"])).action == "runtime"
    part = tmp_path / "part.cfg.j2"
    part.write_text(part.read_text() + "# edited\n")
    os.utime(part, ns=(time.time_ns() + 10**9,) * 2)
    assert (await applier.apply(states[3], ["and another"])).action == "reload"
    assert managed.config.read_text().endswith("# edited\n")


async def test_with_haproxy_not_known_to_run_a_file_is_never_taken_as_what_it_runs(haproxy, tmp_path):
    managed, ports = haproxy
    applier = applier_for(managed, tmp_path, ports)
    await applier.attach()
    await applier.apply(DesiredState((Service("web", (Instance("web", "web-1", "127.0.0.1", free_port()),),
                                              is_default=True),)), ["first"])
    applier.loaded, applier._loaded_stamp = None, None  # what the "written" path leaves
    assert not applier._renders_as_loaded(applier.served)
