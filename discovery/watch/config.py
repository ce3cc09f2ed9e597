"""The watcher's configuration: one frozen object built at the edge (`main.parse_args`) from
flags and environment; everything below receives it or parts of it."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from discovery import cli
from discovery.consul_api import QueryRules
from discovery.files import write_atomic
from discovery.haproxy.config import DEFAULT_TEMPLATE
from discovery.model import ConsulAddress
from discovery.watch.applier import ApplySettings
from discovery.watch.desired import RoutingPolicy

log = logging.getLogger("discovery.watch")


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
    # A stats password made up at this start: written here (owner-only) before HAProxy is given
    # it, so that it survives restarts. Parsing writes nothing; `save_new_stats_password` does.
    new_stats_password_file: Path | None = None


def stats_password(environ: Mapping[str, str], path: Path) -> tuple[str, Path | None]:
    """The stats page's password: DISCOVERY_STATS_PASSWORD, else the file, else a new random one,
    with the file it must be saved to (None when it is already kept). No default password."""
    given = environ.get("DISCOVERY_STATS_PASSWORD", "").strip()
    if given:
        return cli.config_word(given), None
    if path.exists():
        password = path.read_text().strip()
        if not password:
            raise ValueError(f"{path}: empty stats password (use --stats-no-auth to serve without one)")
        return cli.config_word(password), None
    return secrets.token_urlsafe(18), path


def save_new_stats_password(config: WatcherConfig) -> None:
    """Keep a password made up at this start, before any config holding it is written."""
    path, password = config.new_stats_password_file, config.apply.render.stats_password
    if path is None or password is None:
        return
    write_atomic(path, password + "\n", 0o600)
    log.warning("stats page: user and a new random password written to %s", path)
