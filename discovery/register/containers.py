"""The Docker side of the registrator: running containers, their inspect data, and the events
that say when they start and stop (what they ask for is read by `labels`).

Docker's SDK is synchronous; every call runs in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

log = logging.getLogger(__name__)

# Failures worth retrying: the daemon restarting, its socket briefly gone, a slow answer, an
# event stream cut mid-chunk (raw urllib3 errors reach us from the SDK's stream reader).
TRANSIENT = (docker.errors.DockerException, docker.errors.StreamParseError, requests.exceptions.RequestException,
             urllib3.exceptions.HTTPError, OSError)

# Events after which a container may have appeared or disappeared.
STARTING = frozenset({"start", "unpause", "restart"})
STOPPING = frozenset({"die", "stop", "pause", "destroy", "oom"})
# A `kill` with one of these signals is the start of a stop: deregister before the process
# stops accepting, so the load balancer stops sending it requests first.
STOP_SIGNALS = frozenset({"2", "3", "9", "15", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM"})


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    action: str
    container: str
    time_nano: int
    signal: str | None = None

    @property
    def stops(self) -> bool:
        return self.action in STOPPING or (self.action == "kill" and self.signal in STOP_SIGNALS)

    @property
    def starts(self) -> bool:
        return self.action in STARTING


class Containers:
    """Docker through its SDK, off the event loop."""

    def __init__(self, base_url: str | None = None, only_label: str | None = None) -> None:
        self.base_url = base_url
        # Docker filters by label on its side, for listings and events alike: containers without
        # it (another compose project on the same host) are never seen.
        self._labels = {"label": [only_label]} if only_label else {}
        self._client: docker.DockerClient | None = None

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            # Negotiates the API version with the daemon (1.41 on Docker 20.10).
            self._client = (
                docker.DockerClient(base_url=self.base_url, version="auto") if self.base_url else docker.from_env()
            )
        return self._client

    def _reset(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None

    async def host_name(self) -> str:
        info = await asyncio.to_thread(lambda: self._docker().info())
        return str(info.get("Name") or "docker")

    async def running(self) -> list[dict[str, Any]]:
        """Inspect data of every running container."""
        try:
            found = await asyncio.to_thread(lambda: self._docker().containers.list(
                filters={"status": "running", **self._labels}))
        except TRANSIENT:
            self._reset()
            raise
        return [c.attrs for c in found]

    async def inspect(self, container: str) -> dict[str, Any] | None:
        try:
            found = await asyncio.to_thread(lambda: self._docker().containers.get(container))
        except docker.errors.NotFound:
            return None
        except TRANSIENT:
            self._reset()
            raise
        return found.attrs

    async def events(self, since_nano: int | None) -> AsyncIterator[ContainerEvent]:
        """Container events from `since_nano` on (Docker replays the missed ones), until the stream
        breaks: then raises, and the caller resumes from the last event it saw."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ContainerEvent | BaseException] = asyncio.Queue()
        # Docker reads `since` as seconds.nanoseconds: a float would round it by ~0.2 µs, enough to
        # replay or skip the event it names.
        since = None if since_nano is None else f"{since_nano // 10**9}.{since_nano % 10**9:09d}"
        stream = await asyncio.to_thread(
            lambda: self._docker().events(decode=True, since=since, filters={"type": "container", **self._labels})
        )
        stopping = threading.Event()

        def pump() -> None:
            try:
                for raw in stream:
                    if stopping.is_set():
                        return
                    event = _event(raw)
                    if event is not None:
                        loop.call_soon_threadsafe(queue.put_nowait, event)
                loop.call_soon_threadsafe(queue.put_nowait, ConnectionError("Docker closed the event stream"))
            except BaseException as error:  # handed to the event loop, never lost in the thread
                if not stopping.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, error)

        reader = threading.Thread(target=pump, name="docker-events", daemon=True)
        reader.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    self._reset()
                    raise item
                yield item
        finally:
            stopping.set()
            with contextlib.suppress(Exception):
                stream.close()  # unblocks the reader thread


def _event(raw: dict[str, Any]) -> ContainerEvent | None:
    action = str(raw.get("Action") or raw.get("status") or "")
    container = str(raw.get("id") or (raw.get("Actor") or {}).get("ID") or "")
    if not action or not container:
        return None
    action = action.split(":")[0]  # e.g. "health_status: healthy", "exec_start: sh"
    attributes = (raw.get("Actor") or {}).get("Attributes") or {}
    return ContainerEvent(action, container, int(raw.get("timeNano") or 0), attributes.get("signal"))
