"""Tests for demo.webapp: handlers on a real loopback socket, config parsing, graceful stop."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from demo.webapp import (
    SESSION_COOKIE,
    STATE,
    Identity,
    SessionStore,
    WebappConfig,
    build_app,
    detect_primary_ipv4,
    from_args,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
IDENTITY = Identity(hostname="test-host", ip="10.1.2.3")
CONFIG = WebappConfig(tag="blue", max_delay_ms=1000)
WELL_FORMED_UNKNOWN_SID = "A" * 43

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(CONFIG, IDENTITY))) as test_client:
        yield test_client


async def get_index(client: Client, **kwargs: Any) -> dict[str, Any]:
    response = await client.get("/", **kwargs)
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


# --- GET / and sessions ----------------------------------------------------------------------


async def test_index_json_shape_cookie_and_header(client: Client) -> None:
    response = await client.get("/")

    assert response.status == 200
    assert response.headers["X-Backend-Host"] == "test-host"
    body = await response.json()
    assert list(body) == ["hello", "host", "ip", "tag", "sessionViews", "id"]
    assert body["hello"] == "world!"
    assert (body["host"], body["ip"], body["tag"]) == ("test-host", "10.1.2.3", "blue")
    assert body["sessionViews"] == 1
    morsel = response.cookies[SESSION_COOKIE]
    assert morsel.value == body["id"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("GET", "/missing"), ("PUT", "/")])
async def test_every_response_names_the_backend(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.headers["X-Backend-Host"] == "test-host"


async def test_session_views_increment_with_the_cookie(client: Client) -> None:
    first = await get_index(client)
    second = await get_index(client)
    third = await get_index(client)

    assert [first["sessionViews"], second["sessionViews"], third["sessionViews"]] == [1, 2, 3]
    assert first["id"] == second["id"] == third["id"]


async def test_without_the_cookie_a_new_session_starts(client: Client) -> None:
    first = await get_index(client)
    await get_index(client)
    client.session.cookie_jar.clear()

    fresh = await get_index(client)

    assert fresh["sessionViews"] == 1
    assert fresh["id"] != first["id"]


@pytest.mark.parametrize(
    "forged",
    [WELL_FORMED_UNKNOWN_SID, "forged", "A" * 44, "../../etc/passwd", "A" * 42 + "!"],
    ids=["well-formed-unknown", "short", "too-long", "path", "bad-char"],
)
async def test_a_forged_cookie_starts_a_fresh_server_chosen_session(client: Client, forged: str) -> None:
    client.session.cookie_jar.clear()

    response = await client.get("/", headers={"Cookie": f"{SESSION_COOKIE}={forged}"})

    body = await response.json()
    assert body["sessionViews"] == 1
    assert body["id"] != forged  # never adopt a client-chosen id (session fixation)
    assert response.cookies[SESSION_COOKIE].value == body["id"]


def test_session_store_evicts_the_least_recently_used_session() -> None:
    store = SessionStore(max_entries=2)
    old, _, _ = store.visit(None)
    kept, _, _ = store.visit(None)
    store.visit(kept)  # touching `kept` makes `old` the eviction candidate

    store.visit(None)

    assert len(store) == 2
    assert store.visit(kept)[1:] == (3, False)
    assert store.visit(old)[1:] == (1, True)


# --- /health ---------------------------------------------------------------------------------


async def test_health_is_ok_while_serving_and_503_once_draining(client: Client) -> None:
    response = await client.get("/health")
    assert (response.status, await response.json()) == (200, {"status": "ok"})

    client.app[STATE].draining = True
    response = await client.get("/health")
    assert (response.status, await response.json()) == (503, {"status": "draining"})


# --- POST /delay -----------------------------------------------------------------------------


async def test_delay_sleeps_then_answers(client: Client) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()

    response = await client.post("/delay", json={"delay": 50})

    assert response.status == 200
    assert await response.json() == {"delayed": 50, "host": "test-host"}
    assert loop.time() - started >= 0.045


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "valid JSON"),
        (b"", "valid JSON"),
        (b"[50]", "JSON object"),
        (b"{}", "missing 'delay'"),
        (b'{"delay": -1}', "between 0 and 1000"),
        (b'{"delay": 1001}', "between 0 and 1000"),
        (b'{"delay": true}', "integer"),
        (b'{"delay": "50"}', "integer"),
        (b'{"delay": 1.5}', "integer"),
    ],
    ids=["non-json", "empty", "not-object", "missing", "negative", "too-large", "bool", "string", "float"],
)
async def test_delay_rejects_bad_bodies_with_400(client: Client, body: bytes, message: str) -> None:
    response = await client.post("/delay", data=body, headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert response.content_type == "application/json"
    assert message in (await response.json())["error"]


async def test_delay_rejects_bodies_over_64_kib(client: Client) -> None:
    padded = b'{"delay": 1, "pad": "' + b"x" * (64 * 1024) + b'"}'

    response = await client.post("/delay", data=padded)

    assert response.status == 413
    assert "65536" in (await response.json())["error"]


# --- configuration ---------------------------------------------------------------------------


def test_config_defaults() -> None:
    assert from_args([], environ={}) == WebappConfig(
        host="0.0.0.0", port=3000, tag=None, max_delay_ms=30000, shutdown_timeout=10.0
    )


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBAPP_HOST", "127.0.0.1")
    monkeypatch.setenv("WEBAPP_PORT", "8080")
    monkeypatch.setenv("TAG", "green")
    monkeypatch.setenv("WEBAPP_MAX_DELAY_MS", "500")
    monkeypatch.setenv("WEBAPP_SHUTDOWN_TIMEOUT", "2.5")

    assert from_args([]) == WebappConfig(
        host="127.0.0.1", port=8080, tag="green", max_delay_ms=500, shutdown_timeout=2.5
    )


def test_flags_win_over_the_environment() -> None:
    env = {"WEBAPP_PORT": "not-a-port", "TAG": "green"}

    config = from_args(["--port", "9000", "--tag", "red"], environ=env)

    assert (config.port, config.tag) == (9000, "red")


def test_an_empty_tag_means_no_tag() -> None:
    assert from_args([], environ={"TAG": ""}).tag is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBAPP_PORT", "abc"),
        ("WEBAPP_PORT", "70000"),
        ("WEBAPP_MAX_DELAY_MS", "-1"),
        ("WEBAPP_SHUTDOWN_TIMEOUT", "soon"),
        ("WEBAPP_HOST", " "),
    ],
)
def test_a_bad_environment_value_is_a_usage_error(capsys: pytest.CaptureFixture[str], name: str, value: str) -> None:
    with pytest.raises(SystemExit) as excinfo:
        from_args([], environ={name: value})

    assert excinfo.value.code == 2
    assert f"environment variable {name}=" in capsys.readouterr().err


def test_a_bad_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as excinfo:
        from_args(["--port", "abc"], environ={})
    assert excinfo.value.code == 2


def test_help_names_every_env_var_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        from_args(["--help"], environ={})

    assert excinfo.value.code == 0
    text = capsys.readouterr().out
    for name in ("WEBAPP_HOST", "WEBAPP_PORT", "TAG", "WEBAPP_MAX_DELAY_MS", "WEBAPP_SHUTDOWN_TIMEOUT"):
        assert f"env {name}" in text
    assert "exit codes" in text


def test_primary_ipv4_is_an_ipv4_address() -> None:
    assert isinstance(ipaddress.ip_address(detect_primary_ipv4(socket.gethostname())), ipaddress.IPv4Address)


# --- graceful stop of the real process -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_until_healthy(proc: asyncio.subprocess.Process, port: int, within_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    # force_close: each probe uses a fresh connection, like a new client would.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        while True:
            if proc.returncode is not None:
                pytest.fail(f"webapp exited early with {proc.returncode}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if loop.time() > deadline:
                pytest.fail(f"webapp not healthy on port {port} within {within_s}s")
            await asyncio.sleep(0.05)


async def send_delay_request(port: int, delay_ms: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Write a whole POST /delay on its own connection; the response is read later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"delay": delay_ms}).encode()
    head = (
        f"POST /delay HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    # The writer is returned too: dropping it would let garbage collection close the socket.
    return reader, writer


async def read_response(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> tuple[int, dict[str, Any]]:
    reader, writer = stream
    raw = await reader.read()  # "Connection: close": the server ends the stream after the body
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def connection_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # queued in the backlog just as the listener closed; ask again
    writer.close()
    await writer.wait_closed()
    return False


async def test_sigterm_lets_the_in_flight_request_finish_then_exits_0() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBAPP_") and k != "TAG"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.webapp",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    in_flight: asyncio.Task[tuple[int, dict[str, Any]]] | None = None
    try:
        await wait_until_healthy(proc, port, within_s=15)
        in_flight = asyncio.create_task(read_response(await send_delay_request(port, 1500)))
        # The server accepts and reads connections in order, so once a later request on a new
        # connection has been answered, the /delay request is being handled.
        await wait_until_healthy(proc, port, within_s=5)
        assert not in_flight.done()

        proc.send_signal(signal.SIGTERM)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not await connection_refused(port):
            assert loop.time() < deadline, "listener still accepting after SIGTERM"
            await asyncio.sleep(0.01)
        assert not in_flight.done(), "listener should close before the in-flight request ends"

        status, body = await asyncio.wait_for(in_flight, timeout=10)
        assert (status, body["delayed"]) == (200, 1500)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert f"webapp listening on 127.0.0.1:{port} as " in log
        assert "webapp stopped on SIGTERM" in log
    finally:
        if in_flight is not None:
            in_flight.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_it_imports_nothing_from_discovery() -> None:
    """Its image has no discovery wheel: importing it must not pull the package in."""
    probe = "import sys, demo.webapp; print(sorted(m for m in sys.modules if m.split('.')[0] == 'discovery'))"
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
