"""Demo web back end that sits behind HAProxy (a redo of the teaching lab's node.js app).

Each instance says which container answered (hostname, IP, TAG) and counts views per
cookie session, so the effect of load balancing is visible from a browser or curl.

Standalone: it imports nothing from the ``discovery`` package, whose wheel its image does not
install. Run with ``python -m demo.webapp --help`` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("demo.webapp")

SESSION_COOKIE = "discovery.sid"
MAX_SESSIONS = 10_000
MAX_BODY_BYTES = 64 * 1024
# token_urlsafe(32) yields exactly 43 URL-safe base64 characters; anything else is forged.
_SESSION_ID_BYTES = 32
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# Any non-routable address works: connecting a UDP socket only selects a route, it sends nothing.
_PROBE_ADDR = ("10.255.255.255", 1)

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


@dataclass(frozen=True)
class WebappConfig:
    host: str = "0.0.0.0"
    port: int = 3000
    tag: str | None = None
    max_delay_ms: int = 30_000
    shutdown_timeout: float = 10.0


@dataclass(frozen=True)
class Identity:
    """Who is answering: shown in every response so clients see which back end served them."""

    hostname: str
    ip: str


class SessionStore:
    """In-memory view counters keyed by random session id, bounded by LRU eviction."""

    def __init__(self, max_entries: int = MAX_SESSIONS) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max_entries = max_entries
        self._views: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._views)

    def visit(self, session_id: str | None) -> tuple[str, int, bool]:
        """Count a view; return (session id, views, whether the session is new).

        An unknown id is never adopted (that would allow session fixation): the client gets a
        fresh server-generated id instead.
        """
        if session_id is not None and session_id in self._views:
            self._views[session_id] += 1
            self._views.move_to_end(session_id)
            return session_id, self._views[session_id], False
        new_id = secrets.token_urlsafe(_SESSION_ID_BYTES)
        self._views[new_id] = 1
        while len(self._views) > self._max_entries:
            self._views.popitem(last=False)
        return new_id, 1, True


@dataclass
class AppState:
    """Per-application state; a mutable holder because a started app's mapping is frozen."""

    config: WebappConfig
    identity: Identity
    sessions: SessionStore = field(default_factory=SessionStore)
    draining: bool = False


STATE = web.AppKey("state", AppState)


# --- configuration ---------------------------------------------------------------------------


def _parse_host(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


def _parse_port(value: str) -> int:
    port = _parse_int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def _parse_tag(value: str) -> str | None:
    # An empty TAG (e.g. `TAG=` in a compose file) means "no tag", reported as null.
    return value or None


def _parse_int(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def _parse_non_negative_int(value: str) -> int:
    number = _parse_int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def _parse_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


# One table drives the parser, the env fallback and the help text, so they cannot drift apart.
_OPTIONS: tuple[_Option, ...] = (
    _Option("--host", "WEBAPP_HOST", _parse_host, WebappConfig.host, "address to listen on"),
    _Option("--port", "WEBAPP_PORT", _parse_port, WebappConfig.port, "TCP port to listen on (0 = any)"),
    _Option("--tag", "TAG", _parse_tag, WebappConfig.tag, "free-form label echoed as 'tag' in GET /"),
    _Option(
        "--max-delay-ms",
        "WEBAPP_MAX_DELAY_MS",
        _parse_non_negative_int,
        WebappConfig.max_delay_ms,
        "largest delay POST /delay accepts, in milliseconds",
    ),
    _Option(
        "--shutdown-timeout",
        "WEBAPP_SHUTDOWN_TIMEOUT",
        _parse_seconds,
        WebappConfig.shutdown_timeout,
        "seconds to let in-flight requests finish after SIGTERM/SIGINT",
    ),
)

_EPILOG = """\
Every option can also be set through the environment variable shown; a command-line
flag wins over the environment.

exit codes:
  0  clean stop after SIGTERM or SIGINT
  1  startup failed (e.g. the address is already in use)
  2  usage error (bad flag or bad environment value)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo.webapp",
        description="Demo web back end: GET /, GET /health, POST /delay.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for opt in _OPTIONS:
        # default=None marks "not given on the command line" so the env var can fill it in.
        parser.add_argument(
            opt.flag,
            type=opt.parse,
            default=None,
            metavar=opt.env,
            help=f"{opt.help} (env {opt.env}; default: {opt.default})",
        )
    return parser


def from_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> WebappConfig:
    """Build the configuration from flags, then environment variables, then defaults.

    Exits with status 2 (via argparse) on a bad flag or environment value.
    """
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for opt in _OPTIONS:
        value = getattr(args, opt.dest)
        if value is None and opt.env in env:
            try:
                value = opt.parse(env[opt.env])
            except argparse.ArgumentTypeError as exc:
                parser.error(f"environment variable {opt.env}={env[opt.env]!r}: {exc}")
        values[opt.dest] = opt.default if value is None else value
    return WebappConfig(**values)


# --- identity --------------------------------------------------------------------------------


def _usable_ipv4(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_unspecified)


def detect_primary_ipv4(hostname: str) -> str:
    """Best guess of this container's IPv4 address, without sending any traffic.

    Docker maps the container hostname to its address in /etc/hosts, so try that first; on hosts
    where the hostname resolves to loopback (Debian's 127.0.1.1) ask the routing table instead.
    """
    try:
        for *_, sockaddr in socket.getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM):
            if _usable_ipv4(str(sockaddr[0])):
                return str(sockaddr[0])
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE_ADDR)
            address = str(probe.getsockname()[0])
            if _usable_ipv4(address):
                return address
    except OSError:
        pass
    return "127.0.0.1"


def detect_identity() -> Identity:
    hostname = socket.gethostname()
    return Identity(hostname=hostname, ip=detect_primary_ipv4(hostname))


# --- HTTP handlers ---------------------------------------------------------------------------


class _ClientError(Exception):
    """A request the client must fix; answered as JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _add_backend_header(request: web.Request, response: web.StreamResponse) -> None:
    # A signal rather than a middleware so error pages produced by aiohttp itself
    # (404, 405, 413, 500) carry the header too.
    response.headers["X-Backend-Host"] = request.app[STATE].identity.hostname


async def handle_index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cookie = request.cookies.get(SESSION_COOKIE)
    claimed = cookie if cookie is not None and _SESSION_ID_RE.fullmatch(cookie) else None
    session_id, views, is_new = state.sessions.visit(claimed)
    response = web.json_response(
        {
            "hello": "world!",
            "host": state.identity.hostname,
            "ip": state.identity.ip,
            "tag": state.config.tag,
            "sessionViews": views,
            "id": session_id,
        }
    )
    if is_new:
        response.set_cookie(SESSION_COOKIE, session_id, path="/", httponly=True, samesite="Lax")
    return response


async def handle_health(request: web.Request) -> web.Response:
    # 503 while draining tells a health-checking proxy to stop routing here.
    if request.app[STATE].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def _read_delay(request: web.Request, limit: int) -> int:
    try:
        # Stops reading as soon as the app's client_max_size is exceeded, chunked bodies included.
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _ClientError(413, f"body must be at most {MAX_BODY_BYTES} bytes") from None
    try:
        body = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        raise _ClientError(400, "body must be valid JSON") from None
    if not isinstance(body, dict):
        raise _ClientError(400, 'body must be a JSON object like {"delay": 100}')
    if "delay" not in body:
        raise _ClientError(400, "missing 'delay' (milliseconds)")
    delay = body["delay"]
    # bool is a subclass of int in Python, but `true` is not a delay.
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= limit:
        raise _ClientError(400, f"'delay' must be an integer between 0 and {limit}")
    return delay


async def handle_delay(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        delay = await _read_delay(request, state.config.max_delay_ms)
    except _ClientError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    await asyncio.sleep(delay / 1000)
    return web.json_response({"delayed": delay, "host": state.identity.hostname})


def build_app(config: WebappConfig, identity: Identity | None = None) -> web.Application:
    """Build the application; ``identity`` defaults to this machine's hostname and IPv4."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = AppState(config=config, identity=identity or detect_identity())
    app.on_response_prepare.append(_add_backend_header)
    app.router.add_get("/", handle_index)
    app.router.add_get("/health", handle_health)
    app.router.add_post("/delay", handle_delay)
    return app


# --- process lifecycle -----------------------------------------------------------------------


async def serve(config: WebappConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight requests and return."""
    loop = asyncio.get_running_loop()
    stopped_by: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not stopped_by.done():
            stopped_by.set_result(sig)

    # Installed before anything slow so an early signal still leads to a clean stop.
    # A repeated signal while draining is harmless: shutdown-timeout bounds the wait anyway.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        identity = await asyncio.to_thread(detect_identity)  # DNS may block; keep the loop free
        app = build_app(config, identity)
        # AppRunner.cleanup() closes the listener, then waits up to shutdown_timeout for
        # in-flight handlers before cancelling them. Access logging is off to keep output terse.
        runner = web.AppRunner(app, shutdown_timeout=config.shutdown_timeout, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port)
            await site.start()
            port = runner.addresses[0][1] if runner.addresses else config.port
            log.info("webapp listening on %s:%s as %s", config.host, port, identity.hostname)
            stopped = await stopped_by
            app[STATE].draining = True
        finally:
            await runner.cleanup()
        log.info("webapp stopped on %s", stopped.name)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    config = from_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("webapp cannot listen on %s:%s: %s", config.host, config.port, exc)
        return EXIT_STARTUP_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
