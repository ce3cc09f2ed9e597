"""The shared Consul edge: the client, the failures worth retrying, backoff, and `follow_index`,
the one loop that implements Consul's blocking-query rules for every caller (the watcher's
catalog, the registrator's restore detector)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import consul.aio
from consul.base import Response
from consul.exceptions import ACLPermissionDenied, ConsulException

from discovery import metrics
from discovery.model import ConsulAddress

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures worth retrying: Consul down, restarting, electing a leader, or refusing our token
# (an operator may fix the token; exiting would leave HAProxy unmanaged).
TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError, ConsulException)


@dataclass(frozen=True, slots=True)
class QueryRules:
    """How the blocking-query loop behaves (seconds)."""

    wait: float = 55.0  # below Consul's 10 min cap; Consul adds up to wait/16 of jitter
    min_interval: float = 0.05  # pause after a wake-up that brought no new index
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    # Read from any server (`?stale`) while it heard from the leader within this many seconds,
    # else ask the leader: blocking queries go on through a leader election (consul-template's
    # max_stale rule). 0: the leader only.
    max_stale: float = 10.0

    @property
    def client_timeout(self) -> float:
        # Consul may hold a query for wait + wait/16; give the network a margin beyond that.
        return self.wait * 17 / 16 + 10.0

    def backoff(self, failures: int) -> float:
        return backoff(failures, self.backoff_base, self.backoff_max)


def backoff(failures: int, base: float, most: float) -> float:
    """Exponential backoff with equal jitter, so that clients do not retry in step."""
    ceiling = min(most, base * 2 ** min(failures - 1, 16))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def next_index(previous: int, returned: int) -> int:
    """The index to send next, by Consul's documented rules for blocking queries."""
    if returned < previous:
        return 0  # the index went backwards (snapshot restore, new cluster): start over
    if returned < 1:
        return 1  # an index of 0 would make every query return at once: never send it back
    return returned


async def follow_index(
    fetch: Callable[[int], Awaitable[tuple[int, T]]], what: str, rules: QueryRules,
    answered: Callable[[str, int, int], None] | None = None,
) -> AsyncIterator[T]:
    """Yield the result of `fetch` each time it changes; retry failures with backoff for ever.
    `answered(what, index, failed)` hears of every answer, changed or not, with the number of
    failed attempts just before it."""
    index, failures = 0, 0
    last: Any = object()
    while True:
        try:
            returned, data = await fetch(index)
        except TRANSIENT as error:
            metrics.CONSUL_ERRORS.labels(what).inc()
            failures += 1
            delay = rules.backoff(failures)
            level = logging.WARNING if failures == 1 or failures % 20 == 0 else logging.DEBUG
            if isinstance(error, ACLPermissionDenied):
                level = logging.ERROR if failures == 1 or failures % 20 == 0 else logging.DEBUG
            log.log(level, "%s: %s (%s); retry %d in %.1fs, keeping the last known state", what,
                    "Consul refuses our token" if isinstance(error, ACLPermissionDenied) else "Consul unreachable",
                    _describe(error), failures, delay)
            await asyncio.sleep(delay)
            continue
        failed, failures = failures, 0
        if failed:
            log.info("%s: Consul answers again after %d failed attempt(s)", what, failed)
        metrics.CONSUL_INDEX.labels(what).set(returned)
        metrics.CONSUL_LAST_ANSWER.labels(what).set(time.time())
        if answered is not None:
            answered(what, returned, failed)
        # No progress: a wake-up without a new index, or an index that went back or to 0 (Consul
        # bugs have returned 0 for ever: every query then returns at once).
        no_progress = returned <= index or returned < 1
        index = next_index(index, returned)
        if data != last:
            last = data
            yield data
        elif no_progress:
            await asyncio.sleep(rules.min_interval)  # no tight loop


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer to a blocking query, with what Consul says of its freshness."""

    index: int
    data: Any
    last_contact: float = 0.0  # seconds since the answering server last heard from the leader
    known_leader: bool = True


def read_answer(response: Response) -> Answer:
    """The body and the X-Consul-* headers of a read (py-consul's own callbacks drop the headers)."""
    if response.code == 403:
        # Our token, not Consul's health: said as such, and still retried (it may be fixed).
        raise ACLPermissionDenied(f"403 ACL denied, check the watcher's token: {response.body[:200]}")
    if response.code >= 400:
        raise ConsulException(f"{response.code} {response.body}")
    try:
        index = int(response.headers["X-Consul-Index"])
        data = json.loads(response.body) if response.body else None
        last_contact = int(response.headers.get("X-Consul-LastContact", 0)) / 1000
    except (KeyError, ValueError) as error:
        raise ConsulException(f"unreadable answer ({error}): {response.body[:200]!r}") from None
    return Answer(index, data, last_contact, response.headers.get("X-Consul-KnownLeader", "true") == "true")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def connect(address: ConsulAddress, token: str | None, timeout: float) -> consul.aio.Consul:
    """A Consul client; must be created inside the running event loop (aiohttp's rule)."""
    return consul.aio.Consul(
        host=address.host,
        port=address.port,
        scheme=address.scheme,
        token=token or None,
        connections_timeout=timeout,
        # One connection per blocking query: aiohttp's default pool of 100 would make the 101st
        # query wait for another's 55 s wait to end.
        connections_limit=100_000,
    )
