"""Watching a load balancer from the outside: fast HTTP polls, and the moments things happen."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable

from tests.support import Background


def tag_of(port: int, host_header: str | None = None, timeout: float = 1.0) -> str | None:
    """The `tag` of the web app that answered GET / through the proxy, or None (error, non-200)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/", headers={"Host": host_header} if host_header else {})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return str(json.loads(body).get("tag"))
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()


def first_time(condition: Callable[[], bool], timeout: float, every: float = 0.0005) -> float | None:
    """perf_counter() at the first poll where `condition()` holds; None at the deadline."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if condition():
            return time.perf_counter()
        if every:
            time.sleep(every)
    return None


class LastSeen(Background):
    """Polls the proxy in a thread and remembers when each tag last answered."""

    def __init__(self, port: int, host_header: str | None = None) -> None:
        self.port, self.host_header = port, host_header
        self.last: dict[str, float] = {}
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            tag = tag_of(self.port, self.host_header)
            if tag is not None:
                self.last[tag] = time.perf_counter()
