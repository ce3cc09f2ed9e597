"""The watcher: Consul catalog → coalesce → plan → render → validate → write → reload.

    python -m discovery.watch [options]

With no flags it follows the local Consul agent, writes /etc/haproxy/haproxy.cfg and reloads
the HAProxy that Debian's service runs (master socket /run/haproxy-master.sock).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from discovery import cli, metrics
from discovery.applier import APPLY_ERRORS, Applier, ApplySettings
from discovery.catalog import Catalog, QueryRules, connect
from discovery.desired import RoutingPolicy, desired_state
from discovery.guard import ShrinkGuard, Verdict
from discovery.haproxy import (
    HAProxyError,
    ManagedHAProxy,
    MasterCLI,
    write_atomic,
)
from discovery.model import CatalogEntry, ConsulAddress, InvalidValue
from discovery.render import DEFAULT_TEMPLATE, RenderSettings

log = logging.getLogger("discovery.watch")

EXIT_INVALID_CONFIG = 3
EXIT_NO_CONSUL = 4
RETRY_FAILED_APPLY = 5.0  # seconds before a failed apply is tried again with the newest state


@dataclass(frozen=True, slots=True)
class WatcherConfig:
    consul: ConsulAddress = field(default_factory=lambda: ConsulAddress.parse("http://127.0.0.1:8500"))
    token: str | None = None
    policy: RoutingPolicy = field(default_factory=RoutingPolicy)
    apply: ApplySettings = field(
        default_factory=lambda: ApplySettings(DEFAULT_TEMPLATE, Path("/etc/haproxy/haproxy.cfg"))
    )
    master_socket: Path = Path("/run/haproxy-master.sock")
    manage_haproxy: bool = False
    rules: QueryRules = field(default_factory=QueryRules)
    max_shrink: float = 0.5  # ADR 0007: a larger loss of a service's instances waits `shrink_hold`
    shrink_hold: float = 15.0
    wait_min: float = 0.2
    wait_max: float = 2.0
    once: bool = False
    dry_run: bool = False
    once_timeout: float = 30.0
    listen: str | None = "127.0.0.1:9105"


def apply_at(first: float, last: float, applied: float | None, wait_min: float, wait_max: float) -> float:
    """When to apply pending changes (monotonic seconds): min/max quiescence with a leading edge.

    The first change after a quiet period goes out at once, so a lone change costs no latency;
    changes arriving within `wait_min` of an apply are batched until things stay quiet for
    `wait_min`, but never held longer than `wait_max` after the first of them.
    """
    if applied is None or first - applied >= wait_min:
        return first
    return min(last + wait_min, first + wait_max)


def burst_span(wait_min: float, wait_max: float) -> float:
    """How far apart two applies of one burst can be (`apply_at`: the leading edge at once, the
    rest up to `wait_max` after a change that came up to `wait_min` later), with a margin: the
    shrink guard's window, so that a loss split across them counts as one."""
    return wait_max + wait_min + 0.5


class Mailbox:
    """The newest catalog snapshot and why it changed; a burst of puts is read as one."""

    def __init__(self) -> None:
        self.snapshot: tuple[CatalogEntry, ...] | None = None
        self.reasons: list[str] = []
        self.first = self.last = 0.0
        self.changed = asyncio.Event()
        self.arrived = asyncio.Event()  # set by every put; lets a waiter extend its quiet period

    def put(self, snapshot: tuple[CatalogEntry, ...] | None, reason: str) -> None:
        now = time.monotonic()
        if not self.changed.is_set():
            self.first = now
        self.last = now
        if snapshot is not None:
            self.snapshot = snapshot
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.changed.set()
        self.arrived.set()

    def take(self) -> tuple[tuple[CatalogEntry, ...] | None, list[str]]:
        reasons, self.reasons = self.reasons, []
        self.changed.clear()
        return self.snapshot, reasons


async def watch(config: WatcherConfig) -> int:
    if config.once or config.dry_run:
        return await once(config)
    settings = config.apply
    client = connect(config.consul, config.token, config.rules.client_timeout)
    managed = (
        ManagedHAProxy(settings.haproxy_bin, settings.output, config.master_socket) if config.manage_haproxy else None
    )
    applier = Applier(settings)
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
            await applier.attach(MasterCLI(config.master_socket))
        async with asyncio.TaskGroup() as group:
            group.create_task(catalog.run(), name="catalog")
            group.create_task(_apply_loop(config, applier, mailbox, managed, guard), name="apply")
            group.create_task(_drain_loop(applier), name="drain")
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
        snapshot, reasons = mailbox.take()
        if snapshot is None:
            continue
        try:
            state = desired_state(snapshot, config.policy)
        except InvalidValue as error:  # e.g. two instances that would share one server name
            log.error("not applied, keeping the last good config: %s", error)
            continue
        verdict = guard.check(applier.served, state, time.monotonic())
        _log_shrinks(verdict, held)
        held = set(guard.since)
        metrics.SHRINKS_HELD.set(len(held))
        if verdict.recheck_in is not None:
            asyncio.get_running_loop().call_later(verdict.recheck_in, mailbox.put, None, "held shrink due")
        state = verdict.state
        outcome = await applier.apply(state, reasons)
        if outcome.ok and managed and managed.process is None:
            await managed.start()
            await applier.attach(MasterCLI(config.master_socket))
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
        state = desired_state(snapshot, config.policy)
    except InvalidValue as error:
        log.error("the catalog cannot be rendered: %s", error)
        return EXIT_INVALID_CONFIG
    applier = Applier(config.apply)
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
    if config.master_socket.exists():
        await applier.attach(MasterCLI(config.master_socket))
    return cli.EXIT_OK if (await applier.apply(state, reasons)).ok else EXIT_INVALID_CONFIG


def stats_password(path: Path, create: bool) -> str:
    """The stats page's password: DISCOVERY_STATS_PASSWORD, else the file, else a new random one
    saved there (owner-only) so that it survives restarts. There is no default password."""
    given = os.environ.get("DISCOVERY_STATS_PASSWORD", "").strip()
    if given:
        return cli.config_word(given)
    if path.exists():
        password = path.read_text().strip()
        if not password:
            raise ValueError(f"{path}: empty stats password (use --stats-no-auth to serve without one)")
        return cli.config_word(password)
    password = secrets.token_urlsafe(18)
    if create:
        write_atomic(path, password + "\n", 0o600)
        log.warning("stats page: user and a new random password written to %s", path)
    return password


def parse_args(argv: list[str] | None = None) -> tuple[WatcherConfig, str]:
    parser = cli.EnvParser(
        prog="python -m discovery.watch",
        description="Follow Consul and keep HAProxy's configuration equal to the passing instances "
        "of every service tagged for load balancing.",
        epilog=f"""routing tags (prefix set by --tag-prefix, default lb):
  lb                       opt the service in: it gets a backend
  lb.default               the service answers requests that no route matches
  lb.host=<host>           route requests for that Host header
  lb.path=<prefix>         route requests whose path starts with <prefix>
  lb.route=<host><prefix>  route requests for that host under that prefix

exit codes:
  0  stopped by SIGTERM/SIGINT, or --once/--dry-run succeeded
  1  fatal error (--listen address in use; with --manage-haproxy: HAProxy could not start, or exited)
  2  bad flag or environment variable
  {EXIT_INVALID_CONFIG}  --once/--dry-run: the rendered config is invalid or could not be applied
  {EXIT_NO_CONSUL}  --once/--dry-run: Consul gave no complete answer within --once-timeout""",
    )
    opt = parser.option
    cli.consul_options(parser)
    opt("--tag-prefix", env="DISCOVERY_TAG_PREFIX", default="lb",
        help="services with this tag are load balanced; routing tags start with it")
    opt("--default-service", env="DISCOVERY_DEFAULT_SERVICE", default=None,
        help="service for requests no route matches (overrides <prefix>.default tags)")
    opt("--template", env="DISCOVERY_TEMPLATE", default=str(DEFAULT_TEMPLATE), type=str,
        help="Jinja2 template for haproxy.cfg; re-read when it changes")
    opt("--output", env="DISCOVERY_OUTPUT", default="/etc/haproxy/haproxy.cfg", help="haproxy.cfg to write")
    opt("--haproxy-bin", env="DISCOVERY_HAPROXY_BIN", default="haproxy", help="haproxy executable")
    opt("--master-socket", env="DISCOVERY_MASTER_SOCKET", default="/run/haproxy-master.sock",
        help="HAProxy master CLI socket used to reload")
    opt("--runtime-socket", env="DISCOVERY_RUNTIME_SOCKET", default="/run/haproxy/admin.sock",
        type=cli.config_word, help="Runtime API socket written into the config")
    parser.switch("--manage-haproxy", env="DISCOVERY_MANAGE_HAPROXY",
                  help="start and stop HAProxy (master-worker) as a child instead of using a running one")
    word = cli.config_word
    opt("--http-bind", env="DISCOVERY_HTTP_BIND", default=":80", type=word, help="address:port for traffic")
    opt("--stats-bind", env="DISCOVERY_STATS_BIND", default=":1936", type=word, help="address:port for the stats page")
    opt("--haproxy-user", env="DISCOVERY_HAPROXY_USER", default=None, type=word, help="user HAProxy workers drop to")
    opt("--haproxy-group", env="DISCOVERY_HAPROXY_GROUP", default=None, type=word,
        help="group HAProxy workers drop to")
    opt("--server-state-file", env="DISCOVERY_SERVER_STATE_FILE", default=None,
        type=cli.config_word, help="where server state is saved before each reload (default: next to --output, .state)")
    opt("--drain-timeout", env="DISCOVERY_DRAIN_TIMEOUT", default=30.0, type=cli.positive_seconds,
        help="longest a removed server may finish its requests before it is cut; as long as the "
        "template's `timeout server` (e.g. 30s)")
    opt("--max-reloads-per-minute", env="DISCOVERY_MAX_RELOADS_PER_MINUTE", default=30, type=int,
        help="cap on full reloads; membership changes never reload")
    parser.switch("--sticky", env="DISCOVERY_STICKY", help="sticky sessions by cookie in every backend")
    opt("--stats-user", env="DISCOVERY_STATS_USER", default="admin", type=word, help="user of the stats page")
    opt("--stats-password-file", env="DISCOVERY_STATS_PASSWORD_FILE", default=None,
        help="file holding the stats page's password (env DISCOVERY_STATS_PASSWORD wins); created with "
        "a random password when missing (default: stats-password next to --output)")
    parser.switch("--stats-no-auth", env="DISCOVERY_STATS_NO_AUTH",
                  help="serve the stats page (and HAProxy's /metrics) without credentials")
    opt("--wait-min", env="DISCOVERY_WAIT_MIN", default=0.2, type=cli.positive_seconds,
        help="quiet time that ends a burst of changes (e.g. 200ms)")
    opt("--wait-max", env="DISCOVERY_WAIT_MAX", default=2.0, type=cli.positive_seconds,
        help="longest a burst may delay an apply (e.g. 2s)")
    opt("--max-shrink", env="DISCOVERY_MAX_SHRINK", default=50.0, type=float, metavar="PERCENT",
        help="a service losing more than this share of its instances at once keeps them until Consul "
        "has said so for --shrink-hold (a wiped or restarting Consul looks like that); 100 turns it off")
    opt("--shrink-hold", env="DISCOVERY_SHRINK_HOLD", default=15.0, type=cli.positive_seconds,
        help="how long a larger shrink must last before it is applied (e.g. 15s)")
    opt("--max-stale", env="DISCOVERY_MAX_STALE", default=10.0, type=cli.positive_seconds,
        help="read from any Consul server while it heard from the leader within this time, else from "
        "the leader (lets blocking queries go on through a leader election); 0 reads from the leader only")
    opt("--consul-wait", env="DISCOVERY_CONSUL_WAIT", default=55.0, type=cli.positive_seconds,
        help="blocking-query wait sent to Consul (at most 10m)")
    opt("--once-timeout", env="DISCOVERY_ONCE_TIMEOUT", default=30.0, type=cli.positive_seconds,
        help="--once/--dry-run: how long to wait for Consul")
    opt("--listen", env="DISCOVERY_LISTEN", default="127.0.0.1:9105", type=cli.listen_address,
        help="host:port for /metrics, /status and /health ('off' to disable)")
    opt("--log-level", env="DISCOVERY_LOG_LEVEL", default="info",
        choices=["debug", "info", "warning", "error"], help="log verbosity")
    parser.add_argument("--once", action="store_true", help="render, validate, write and reload once, then exit")
    parser.add_argument("--dry-run", action="store_true", help="print the diff against --output and exit")
    args = parser.parse_args(argv)
    if args.wait_max < args.wait_min:
        parser.error("--wait-max must not be shorter than --wait-min")
    if not 1 <= args.consul_wait <= 600:
        parser.error("--consul-wait must be between 1s and 10m")
    if not 0 <= args.max_shrink <= 100:
        parser.error("--max-shrink must be a percentage between 0 and 100")
    if args.max_reloads_per_minute < 1:
        parser.error("--max-reloads-per-minute must be at least 1")
    output = Path(args.output)
    template = Path(args.template)
    if not template.is_file():
        parser.error(f"--template {template}: no such file")
    try:
        config = WatcherConfig(
            consul=ConsulAddress.parse(args.consul),
            token=cli.consul_token(args.token, args.token_file),
            policy=RoutingPolicy(args.tag_prefix, args.default_service),
            apply=ApplySettings(
                template=template,
                output=output,
                haproxy_bin=args.haproxy_bin,
                render=RenderSettings(
                    http_bind=args.http_bind, stats_bind=args.stats_bind, runtime_socket=args.runtime_socket,
                    user=args.haproxy_user, group=args.haproxy_group, sticky=args.sticky,
                    server_state_file=args.server_state_file or str(output.with_suffix(".state")),
                    stats_user=args.stats_user,
                    stats_password=None if args.stats_no_auth else stats_password(
                        Path(args.stats_password_file or output.parent / "stats-password"), create=not args.dry_run),
                ),
                drain_timeout=args.drain_timeout,
                max_reloads_per_minute=args.max_reloads_per_minute,
            ),
            master_socket=Path(args.master_socket),
            manage_haproxy=args.manage_haproxy,
            rules=QueryRules(wait=args.consul_wait, max_stale=args.max_stale),
            max_shrink=args.max_shrink / 100,
            shrink_hold=args.shrink_hold,
            wait_min=args.wait_min,
            wait_max=args.wait_max,
            once=args.once,
            dry_run=args.dry_run,
            once_timeout=args.once_timeout,
            listen=args.listen,
        )
    except (InvalidValue, ValueError, OSError) as error:
        parser.error(str(error))
    if not os.access(output.parent, os.W_OK) and not config.dry_run:
        parser.error(f"--output {output}: directory {output.parent} is not writable")
    return config, args.log_level


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging("info")  # parsing may already say something (a new stats password)
    config, level = parse_args(argv)
    cli.setup_logging(level)
    return cli.run(lambda: watch(config))


if __name__ == "__main__":
    raise SystemExit(main())
