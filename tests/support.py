"""Helpers shared by the integration and end-to-end suites: real processes, free ports,
deadline-based waiting, and an HTTP load that counts failures."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
import pytest

T = TypeVar("T")


def require(binary: str) -> str:
    """The path of a prerequisite; a missing one fails the run loudly, never skips it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"prerequisite {binary!r} is not installed: run ../shared/env/provision", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], T], what: str, timeout: float = 15.0, every: float = 0.05,
               explain: Callable[[], str] | None = None) -> T:
    """Poll `check` until it returns something truthy; fail with `what` (and `explain()`) at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # the condition may raise while things start up
            last_error = error
        time.sleep(every)
    detail = f" (last error: {last_error!r})" if last_error else ""
    if explain is not None:
        detail += f"; {explain()}"
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 5.0,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(port: int, path: str = "/", **kwargs: Any) -> Any:
    status, _, body = http_get(port, path, **kwargs)
    assert status == 200, f"GET {path} on {port}: {status} {body[:200]!r}"
    return json.loads(body)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class Background:
    """A daemon thread running `_run` for as long as the `with` block lasts."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class Load(Background):
    """Steady GET traffic from `clients` concurrent loops in their own thread and event loop, each
    request on a new connection (the hardest case for a reload: every request needs the listening
    socket); any error or non-200 counts as failed.

    Used as a context manager around a change: `failed` must stay 0 for clients that were not
    talking to a removed instance. A zero means something only if load was sent: the block's end
    waits (10 s at most) until `at_least` requests have been made, and `assert_no_failure` checks
    both. 100 is far below what any case sends (the fault suite's smallest was 428 requests, at
    290 a second or more, tests/faults/results.json at 5f873ae), so it costs a case nothing unless
    the load never ran."""

    def __init__(self, port: int, path: str = "/", clients: int = 4, host: str = "127.0.0.1",
                 at_least: int = 100) -> None:
        self.url = f"http://{host}:{port}{path}"
        self.clients = clients
        self.at_least = at_least
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.failed_at: list[float] = []  # time.monotonic() of each failure
        self.seconds = 0.0
        super().__init__()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
            started = time.perf_counter()
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))
            self.seconds = time.perf_counter() - started

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.get(self.url) as response:
                    await response.read()
                    outcome = "ok" if response.status == 200 else f"http {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                outcome = type(error).__name__
            self.outcomes[outcome] += 1
            if outcome != "ok":
                self.failed_at.append(time.monotonic())
            if outcome != "ok" and len(self.errors) < 20:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {outcome}")

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.total - self.outcomes["ok"]

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10
        while self.total < self.at_least and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        super().__exit__(*exc)

    def assert_no_failure(self) -> None:
        assert self.total >= self.at_least, f"only {self.total} requests were sent: a zero proves nothing"
        assert self.failed == 0, (self.outcomes, self.errors)

    @property
    def summary(self) -> str:
        return f"{self.total} GETs, {self.rate:.0f}/s"

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


class SlowRequest:
    """A `POST /delay` sent through HAProxy that stays in flight for `delay_ms`; the constructor
    returns once `in_flight()` confirms it reached a back end."""

    def __init__(self, proxy_port: int, delay_ms: int, in_flight: Callable[[], bool]) -> None:
        self.status: int | None = None
        self._thread = threading.Thread(target=self._send, args=(proxy_port, delay_ms), daemon=True)
        self._thread.start()
        wait_until(in_flight, "the slow request to reach its back end")

    def _send(self, proxy_port: int, delay_ms: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
        try:
            connection.request("POST", "/delay", body=json.dumps({"delay": delay_ms}),
                               headers={"Content-Type": "application/json"})
            self.status = connection.getresponse().status
        finally:
            connection.close()

    def result(self, timeout: float = 30) -> int | None:
        self._thread.join(timeout)
        return self.status


class NeverEmpty(Background):
    """Samples `serving()` (the servers of a backend that take traffic; None when it cannot be
    read) in a thread while a fault runs, and records every sample that found none."""

    def __init__(self, serving: Callable[[], set[str] | None], every: float = 0.1) -> None:
        self.serving = serving
        self.every = every
        self.samples = 0
        self.empty: list[str] = []
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.serving()
            except Exception:
                found = None
            if found is not None:
                self.samples += 1
                if not found:
                    self.empty.append(time.strftime("%H:%M:%S"))
            self._stop.wait(self.every)

    def check(self) -> None:
        assert self.samples >= 3, f"only {self.samples} samples taken"
        assert not self.empty, f"empty backend observed while instances were alive at {self.empty[:5]}"
