"""The watcher's command line: flags and environment → `WatcherConfig`; nothing else happens here.

    python -m discovery.watch [options]

With no flags it follows the local Consul agent, writes /etc/haproxy/haproxy.cfg and reloads
the HAProxy that Debian's service runs (master socket /run/haproxy-master.sock).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from discovery import cli
from discovery.consul_api import QueryRules
from discovery.haproxy.config import DEFAULT_TEMPLATE, RenderSettings
from discovery.model import ConsulAddress, InvalidValue
from discovery.watch.applier import ApplySettings
from discovery.watch.config import WatcherConfig, stats_password
from discovery.watch.desired import RoutingPolicy, routing_tags_help
from discovery.watch.run import EXIT_INVALID_CONFIG, EXIT_NO_CONSUL, watch


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> tuple[WatcherConfig, str]:
    """The configuration and the log level; exits 2 with a message on a bad flag or variable."""
    parser = build_parser(environ)
    return config_from(parser.parse_args(argv), environ, parser)


def build_parser(environ: Mapping[str, str]) -> cli.EnvParser:
    parser = cli.EnvParser(
        environ=environ,
        prog="python -m discovery.watch",
        description="Follow Consul and keep HAProxy's configuration equal to the passing instances "
        "of every service tagged for load balancing.",
        epilog=f"""routing tags (prefix set by --tag-prefix, default lb):
{routing_tags_help()}

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
    return parser


def config_from(args: argparse.Namespace, environ: Mapping[str, str],
                parser: cli.EnvParser) -> tuple[WatcherConfig, str]:
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
        password, new_password_file = None, None
        if not args.stats_no_auth:
            password, new_password_file = stats_password(
                environ, Path(args.stats_password_file or output.parent / "stats-password"))
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
                    stats_password=password,
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
            new_stats_password_file=None if args.dry_run else new_password_file,
        )
    except (InvalidValue, ValueError, OSError) as error:
        parser.error(str(error))
    if not os.access(output.parent, os.W_OK) and not config.dry_run:
        parser.error(f"--output {output}: directory {output.parent} is not writable")
    keep = config.new_stats_password_file
    if keep is not None and not os.access(keep.parent, os.W_OK):
        parser.error(f"--stats-password-file {keep}: directory {keep.parent} is missing or not writable "
                     "(a new password must be kept there)")
    return config, args.log_level


def main(argv: list[str] | None = None) -> int:
    config, level = parse_args(argv, os.environ)
    cli.setup_logging(level)
    return cli.run(lambda: watch(config))
