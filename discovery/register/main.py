"""The registrator's command line: flags and environment → `RegistratorConfig`.

    python -m discovery.register [options]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from discovery import cli
from discovery.model import ConsulAddress, InvalidValue
from discovery.register.config import RegistratorConfig
from discovery.register.labels import labels_help
from discovery.register.registrator import serve


def label_filter(text: str) -> str:
    """A Docker label filter: KEY or KEY=VALUE, one word."""
    key = text.partition("=")[0]
    if not key or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{text!r}: want KEY or KEY=VALUE without spaces")
    return text


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> tuple[RegistratorConfig, str]:
    """The configuration and the log level; exits 2 with a message on a bad flag or variable."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.resync < 1:
        parser.error("--resync must be at least 1s")
    try:
        # Consul reads a Go duration with its unit, and reaps no sooner than a minute.
        match = re.fullmatch(r"([1-9][0-9]*)(s|m|h)", args.deregister_after)
        if not match or int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]] < 60:
            raise ValueError(f"--deregister-after {args.deregister_after!r}: want a duration of at least 1m, "
                             "with its unit (90s, 1m, 2h)")
        config = RegistratorConfig(
            consul=ConsulAddress.parse(args.consul), token=cli.consul_token(args.token, args.token_file),
            docker_url=args.docker, owner=args.id, network=args.network, only_label=args.only_label,
            resync=args.resync, deregister_after=args.deregister_after,
            ready_timeout=args.ready_timeout, listen=args.listen,
        )
    except (InvalidValue, ValueError) as error:
        parser.error(str(error))
    return config, args.log_level


def build_parser(environ: Mapping[str, str]) -> cli.EnvParser:
    parser = cli.EnvParser(
        environ=environ,
        prog="python -m discovery.register",
        description="Register the Docker containers that opt in (labels discovery.* or registrator's "
        "SERVICE_* variables) as Consul services with an HTTP health check, and deregister them "
        "when they stop.",
        epilog=f"""labels (env fallback in brackets):
{labels_help()}

exit codes:
  0  stopped by SIGTERM/SIGINT
  1  the --listen address cannot be listened on
  2  bad flag or environment variable
It never exits because Docker or Consul is unreachable: it retries with backoff.""",
    )
    opt = parser.option
    cli.consul_options(parser)
    opt("--docker", env="DISCOVERY_DOCKER", default=None, metavar="URL",
        help="Docker API URL (unset: Docker's own DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, "
        "else the local socket)")
    opt("--id", env="DISCOVERY_REGISTRATOR_ID", default=None,
        help="owner name written into each registration; only those are ever changed (default: Docker host name)")
    opt("--network", env="DISCOVERY_NETWORK", default=None,
        help="Docker network whose container address is registered (default: the container's only network)")
    opt("--only-label", env="DISCOVERY_ONLY_LABEL", default=None, type=label_filter, metavar="KEY[=VALUE]",
        help="only consider containers with this label (e.g. com.docker.compose.project=discovery)")
    opt("--resync", env="DISCOVERY_RESYNC", default=30.0, type=cli.positive_seconds,
        help="full reconcile interval (e.g. 30s)")
    opt("--ready-timeout", env="DISCOVERY_READY_TIMEOUT", default=30.0, type=cli.positive_seconds,
        help="how long to probe a new container's health path before registering it anyway")
    opt("--deregister-after", env="DISCOVERY_DEREGISTER_AFTER", default="1m",
        help="Consul removes an instance critical for this long (DeregisterCriticalServiceAfter; min 1m)")
    opt("--listen", env="DISCOVERY_LISTEN", default="127.0.0.1:9106", type=cli.listen_address,
        help="host:port for /metrics and /health ('off' to disable)")
    opt("--log-level", env="DISCOVERY_LOG_LEVEL", default="info",
        choices=["debug", "info", "warning", "error"], help="log verbosity")
    return parser


def main(argv: list[str] | None = None) -> int:
    config, level = parse_args(argv, os.environ)
    cli.setup_logging(level)
    return cli.run(lambda: serve(config))
