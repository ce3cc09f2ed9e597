"""The Consul side of the watcher: follow the catalog with blocking queries.

`Catalog` runs one `follow_index` loop (`discovery.consul_api`) on `/v1/catalog/services` and one
per opted-in service on `/v1/health/service/<name>?passing`, and publishes a complete snapshot
whenever one changes. A snapshot is published only once every opted-in service has answered at
least once, so a half-known catalog never reaches HAProxy; while Consul cannot be asked, nothing
is published and the last good state stays in force ("cannot ask" is not "none").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import consul.aio

from discovery import metrics
from discovery.consul_api import Answer, QueryRules, follow_index, read_answer
from discovery.model import CatalogEntry, Instance, InvalidValue, service_name, shown

log = logging.getLogger(__name__)

NEW_SERVICE_GRACE = 10.0  # seconds a snapshot waits for a newly opted-in service's first answer

def parse_instances(
    name: str, entries: list[dict[str, Any]], known: dict[tuple[object, ...], Instance] | None = None,
) -> tuple[tuple[Instance, ...], list[str]]:
    """Instances from `/v1/health/service/<name>`, plus the reason each refused entry was refused.

    `known` (kept by the caller from one answer to the next, and updated here) maps an entry's raw
    values to the Instance they made: validating every value again cost 120 ms an answer for a
    service of 10,000 instances, of which one had changed (the benchmark's scale rows)."""
    instances: list[Instance] = []
    refused: list[str] = []
    seen: set[str] = set()
    made: dict[tuple[object, ...], Instance] = {}
    for entry in entries or []:
        service = entry.get("Service") or {}
        node = entry.get("Node") or {}
        # An empty service address means "the node's address" in Consul's catalog.
        addr = service.get("Address") or node.get("Address") or ""
        service_id = str(service.get("ID", ""))
        if service.get("Service", name) != name:
            # Consul matches the name case-insensitively: `Web` instances answer for `web`,
            # which opted in on its own tags, not theirs.
            refused.append(f"instance {shown(service_id)}: registered as {shown(service.get('Service'))}, not {name!r}")
            continue
        if service_id in seen:
            # IDs are unique per agent, not per cluster: two nodes may both run "web-1".
            service_id = f"{service_id}:{node.get('Node', '')}"
        port = service.get("Port", 0)
        raw = (service_id, addr, port) if type(addr) is str and type(port) is int else None  # hashable
        try:
            instance = (known.get(raw) if known and raw else None) or Instance(name, service_id, addr, port)
        except InvalidValue as error:
            refused.append(f"instance {shown(service.get('ID'))}: {error}")
            continue
        instances.append(instance)
        if raw:
            made[raw] = instance
        seen.add(service_id)
    if known is not None:
        known.clear()
        known.update(made)
    return tuple(instances), refused


class Catalog:
    """Follows Consul and calls `publish` with every new complete snapshot."""

    def __init__(
        self,
        client: consul.aio.Consul,
        opted_in: Callable[[frozenset[str]], bool],
        publish: Callable[[tuple[CatalogEntry, ...], str], None],
        rules: QueryRules = QueryRules(),
    ) -> None:
        self.client = client
        self.opted_in = opted_in
        self.publish = publish
        self.rules = rules
        self._tags: dict[str, frozenset[str]] = {}
        self._instances: dict[str, tuple[Instance, ...]] = {}
        self._refused: dict[str, list[str]] = {}
        self.answers: dict[str, tuple[int, float]] = {}  # query -> (index, when), for /status
        self._asked: dict[str, float] = {}  # service -> when its first health query went out
        self._refused_names: set[str] = set()
        self._stale_said: set[str] = set()  # paths whose too-stale answers were logged (once each)

    def _valid(self, name: str) -> bool:
        """A service name we could route; anything else is refused once, before any query
        (Consul may not even answer for it: a name with a newline or `..` fails every time)."""
        try:
            service_name(name)
            return True
        except InvalidValue as error:
            if name not in self._refused_names:
                self._refused_names.add(name)
                log.warning("not routing a service: %s", error)
                metrics.REFUSED.labels("service").inc()
            return False

    def _answered(self, what: str, index: int, failed: int) -> None:
        self.answers[what] = (index, time.time())

    def status(self) -> dict[str, object]:
        now = time.time()
        return {
            "complete": self._tags.keys() <= self._instances.keys(),
            "queries": {what: {"index": index, "seconds_since_answer": round(now - when, 3)}
                        for what, (index, when) in sorted(self.answers.items())},
        }

    async def run(self) -> None:
        followers: dict[str, asyncio.Task[None]] = {}
        async with asyncio.TaskGroup() as group:
            async for services in follow_index(self._fetch_services, "catalog", self.rules, self._answered):
                wanted = {name: frozenset(tags or ()) for name, tags in services.items()}
                wanted = {name: tags for name, tags in wanted.items() if self.opted_in(tags) and self._valid(name)}
                for gone in followers.keys() - wanted.keys():
                    followers.pop(gone).cancel()
                    self.answers.pop(f"service {gone}", None)
                    self._asked.pop(gone, None)
                    self._instances.pop(gone, None)
                    self._refused.pop(gone, None)
                self._tags = wanted
                for name in sorted(wanted.keys() - followers.keys()):
                    self._asked[name] = time.monotonic()
                    followers[name] = group.create_task(self._follow_service(name), name=f"health:{name}")
                self._publish("catalog changed")

    async def _read(self, path: str, index: int, *params: tuple[str, str]) -> tuple[int, Any]:
        """A blocking read, stale while fresh enough (QueryRules.max_stale), else from the leader."""
        query = [*params, ("wait", self._wait), *([("index", str(index))] if index else [])]
        stale = self.rules.max_stale > 0
        answer = await self._get(path, [*query, ("stale", "1")] if stale else query)
        if stale and answer.last_contact > self.rules.max_stale:
            metrics.STALE_ANSWERS.labels(path).inc()
            if path not in self._stale_said:
                self._stale_said.add(path)
                log.warning("%s: the answering server last heard from the leader %.1f s ago (over --max-stale "
                            "%gs%s): asking the leader", path, answer.last_contact, self.rules.max_stale,
                            "" if answer.known_leader else "; no known leader")
            answer = await self._get(path, query)
        else:
            self._stale_said.discard(path)
        return answer.index, answer.data

    async def _get(self, path: str, query: list[tuple[str, str]]) -> Answer:
        answer: Answer = await self.client.http.get(read_answer, path, params=query,
                                                    headers=self.client.prepare_headers())
        return answer

    async def _fetch_services(self, index: int) -> tuple[int, dict[str, list[str]]]:
        returned, services = await self._read("/v1/catalog/services", index)
        return returned, services or {}

    async def _follow_service(self, name: str) -> None:
        async def fetch(index: int) -> tuple[int, list[dict[str, Any]]]:
            returned, entries = await self._read(f"/v1/health/service/{name}", index, ("passing", "1"))
            return returned, entries or []

        known: dict[tuple[object, ...], Instance] = {}
        async for entries in follow_index(fetch, f"service {name}", self.rules, self._answered):
            instances, refused = parse_instances(name, entries, known)
            if refused != self._refused.get(name):
                for reason in refused:
                    log.warning("service %r: not routing %s", name, reason)
                    metrics.REFUSED.labels("instance").inc()
            self._refused[name] = refused
            if self._instances.get(name) == instances and name in self._instances:
                # Consul's answer changed only in what we do not route on (Raft indexes after an
                # anti-entropy sync, check output): publishing would start a quiet period and
                # delay the next real change by --wait-min.
                continue
            self._instances[name] = instances
            self._publish(f"health of {name} changed")

    @property
    def _wait(self) -> str:
        return f"{self.rules.wait:g}s"

    def _publish(self, reason: str) -> None:
        silent = self._tags.keys() - self._instances.keys()
        now = time.monotonic()
        if any(now - self._asked.get(name, now) < NEW_SERVICE_GRACE for name in silent):
            return  # a new service has not answered yet: wait for it rather than show it empty
        # A new service still silent after the grace period is left out (not shown empty), so
        # that it cannot hold every other service's changes back.
        snapshot = tuple(
            CatalogEntry(name, tags, self._instances[name])
            for name, tags in sorted(self._tags.items()) if name in self._instances
        )
        metrics.CHANGES_SEEN.inc()
        self.publish(snapshot, reason)
