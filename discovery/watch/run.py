"""The running watcher: its tasks (catalog, apply, drains, template), owned by one TaskGroup,
and the one-shot `--once` / `--dry-run`."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import sys
import time
from pathlib import Path

from discovery import cli, metrics
from discovery.consul_api import connect
from discovery.haproxy.binary import ManagedHAProxy
from discovery.haproxy.config import DEFAULT_TEMPLATE
from discovery.haproxy.errors import HAProxyError
from discovery.haproxy.sockets import HAProxySockets
from discovery.watch.applier import APPLY_ERRORS, Applier
from discovery.watch.catalog import Catalog
from discovery.watch.coalesce import Mailbox, apply_at, burst_span
from discovery.watch.config import WatcherConfig, save_new_stats_password
from discovery.watch.desired import Refusal, Unroutable, desired_state
from discovery.watch.guard import ShrinkGuard, Verdict
from discovery.watch.timeline import Timeline

log = logging.getLogger("discovery.watch")

EXIT_INVALID_CONFIG = 3
EXIT_NO_CONSUL = 4
RETRY_FAILED_APPLY = 5.0  # seconds before a failed apply is tried again with the newest state


async def watch(config: WatcherConfig) -> int:
    if config.once or config.dry_run:
        return await once(config)
    settings = config.apply
    if not keep_stats_password(config):
        return cli.EXIT_FATAL
    client = connect(config.consul, config.token, config.rules.client_timeout)
    managed = (
        ManagedHAProxy(settings.haproxy_bin, settings.output, config.master_socket) if config.manage_haproxy else None
    )
    applier = Applier(settings, haproxy_sockets(config))
    mailbox = Mailbox()
    catalog = Catalog(client, config.policy.opted_in, mailbox.put, config.rules)
    guard = ShrinkGuard(config.max_shrink, config.shrink_hold, window=burst_span(config.wait_min, config.wait_max))
    log.info("watching %s for services tagged %r; writing %s", config.consul, config.policy.tag_prefix,
             settings.output)
    fatal: HAProxyError | None = None
    server = None
    if config.listen:
        status = metrics.app(lambda: {"consul": {"address": str(config.consul), **catalog.status()},
                                      **applier.status(), "held_shrinks": sorted(guard.since)})
        server = await metrics.serve(status, config.listen)
        log.info("metrics and status on http://%s/ (/metrics, /status, /health)", config.listen)
    try:
        await applier.bootstrap()
        if managed and settings.output.exists():
            # Serve the last good config at once, even before Consul answers.
            await managed.start()
        if not managed or managed.process:
            await applier.attach()
        async with asyncio.TaskGroup() as group:
            group.create_task(catalog.run(), name="catalog")
            group.create_task(_apply_loop(config, applier, mailbox, managed, guard), name="apply")
            group.create_task(_drain_loop(applier), name="drain")
            group.create_task(applier.post_check.run(), name="post-check")
            if managed:
                group.create_task(managed.supervise(), name="haproxy")
            if settings.template != DEFAULT_TEMPLATE:
                group.create_task(_watch_template(settings.template, mailbox), name="template")
    except* HAProxyError as errors:  # only a managed HAProxy that cannot start ends the watcher
        fatal = errors.exceptions[0]  # type: ignore[assignment]
    finally:
        await client.close()
        if managed:
            await managed.stop()
        if server:
            await server.cleanup()
    if fatal is not None:
        log.error("fatal: %s", fatal)
        return cli.EXIT_FATAL
    return cli.EXIT_OK


def keep_stats_password(config: WatcherConfig) -> bool:
    """Save a password made up at this start; False (fatal) when it cannot be kept: HAProxy must
    never be given a password nobody can read back."""
    try:
        save_new_stats_password(config)
    except OSError as error:
        log.error("fatal: cannot keep the new stats password in %s: %s", config.new_stats_password_file, error)
        return False
    return True


def haproxy_sockets(config: WatcherConfig) -> HAProxySockets:
    """The one set of handles on HAProxy: the master socket given, the Runtime API socket the
    rendered config creates."""
    return HAProxySockets.at(config.master_socket, Path(config.apply.render.runtime_socket))


def say_refusals(refusals: list[Refusal]) -> None:
    """What the desired state leaves out of the catalog: logged, and counted when a value was refused."""
    for refusal in refusals:
        log.warning("%s", refusal)
        if refusal.counted:
            metrics.REFUSED.labels(refusal.kind).inc()


async def _apply_loop(
    config: WatcherConfig, applier: Applier, mailbox: Mailbox, managed: ManagedHAProxy | None, guard: ShrinkGuard
) -> None:
    applied_at: float | None = None
    held: set[str] = set()
    while True:
        await mailbox.changed.wait()
        while (delay := apply_at(mailbox.first, mailbox.last, applied_at, config.wait_min, config.wait_max)
               - time.monotonic()) > 0:
            mailbox.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await mailbox.arrived.wait()
        timeline = Timeline(consul_answered=mailbox.last)
        snapshot, reasons = mailbox.take()
        timeline.mark("taken")
        if snapshot is None:
            continue
        try:
            state, refusals = desired_state(snapshot, config.policy)
        except Unroutable as error:  # e.g. two instances that would share one server name
            say_refusals(error.refusals)
            log.error("not applied, keeping the last good config: %s", error)
            continue
        say_refusals(refusals)
        verdict = guard.check(applier.served, state, time.monotonic())
        _log_shrinks(verdict, held)
        held = set(guard.since)
        metrics.SHRINKS_HELD.set(len(held))
        if verdict.recheck_in is not None:
            asyncio.get_running_loop().call_later(verdict.recheck_in, mailbox.put, None, "held shrink due")
        state = verdict.state
        timeline.mark("decided")
        outcome = await applier.apply(state, reasons, timeline)
        if outcome.ok and managed and managed.process is None:
            await managed.start()
            await applier.attach()
        elif not outcome.ok:
            asyncio.get_running_loop().call_later(RETRY_FAILED_APPLY, mailbox.put, None, "retry after failure")
        elif outcome.action == "written" and not managed:
            # HAProxy's supervisor starts it on this file; once it answers, make sure it runs
            # exactly this (it may have started on an earlier file).
            asyncio.get_running_loop().call_later(1.0, mailbox.put, None, "HAProxy was not running")
        if outcome.action != "unchanged":  # only real changes open a quiet period
            applied_at = time.monotonic()


def _log_shrinks(verdict: Verdict, held: set[str]) -> None:
    """One line when a shrink starts being held, and one when it ends, either way."""
    for hold in verdict.held:
        if hold.service not in held:
            log.warning("large shrink held until Consul has said it for --shrink-hold: %s", hold)
    for name in verdict.confirmed:
        log.warning("service %s: held shrink applied, Consul kept saying it", name)
    for name in held - {hold.service for hold in verdict.held} - set(verdict.confirmed):
        log.info("service %s: held shrink over, Consul lists its instances again", name)


async def _drain_loop(applier: Applier, every: float = 0.1) -> None:
    """Removed servers leave as soon as their last request ended: look often, it is cheap."""
    while True:
        await asyncio.sleep(every)
        await applier.finish_drains()


async def _watch_template(template: Path, mailbox: Mailbox, every: float = 1.0) -> None:
    """A user's template may be edited while the watcher runs: re-render when it changes."""
    seen = _mtime(template)
    while True:
        await asyncio.sleep(every)
        if (now := _mtime(template)) != seen:
            seen = now
            mailbox.put(None, f"template {template} changed")


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


async def once(config: WatcherConfig) -> int:
    """--once and --dry-run: take one complete snapshot, then render (and apply) it."""
    client = connect(config.consul, config.token, config.rules.client_timeout)
    mailbox = Mailbox()
    catalog = Catalog(client, config.policy.opted_in, mailbox.put, config.rules)
    try:
        async with asyncio.timeout(config.once_timeout):
            follow = asyncio.create_task(catalog.run())
            try:
                await mailbox.changed.wait()
            finally:
                follow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follow
    except TimeoutError:
        log.error("no complete answer from Consul at %s within %.0fs", config.consul, config.once_timeout)
        return EXIT_NO_CONSUL
    finally:
        await client.close()
    snapshot, reasons = mailbox.take()
    assert snapshot is not None
    try:
        state, refusals = desired_state(snapshot, config.policy)
    except Unroutable as error:
        say_refusals(error.refusals)
        log.error("the catalog cannot be rendered: %s", error)
        return EXIT_INVALID_CONFIG
    say_refusals(refusals)
    applier = Applier(config.apply, haproxy_sockets(config))
    output = config.apply.output
    if config.dry_run:
        try:
            text = await applier.candidate(state)
        except APPLY_ERRORS as error:
            log.error("the rendered config is invalid: %s", error)
            return EXIT_INVALID_CONFIG
        current = output.read_text() if output.exists() else ""
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=str(output), tofile=f"{output} (rendered)",
        ))
        return cli.EXIT_OK
    if not keep_stats_password(config):
        return cli.EXIT_FATAL
    if config.master_socket.exists():
        await applier.attach()
    return cli.EXIT_OK if (await applier.apply(state, reasons)).ok else EXIT_INVALID_CONFIG
