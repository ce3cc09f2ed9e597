"""The registrator: keep Consul's agent equal to the running containers that opted in.

Docker's event stream gives the fast path (register on start, deregister on kill/stop/die);
a full reconcile both ways — on start, after every reconnect, and every --resync — is the
safety net for anything missed. It only ever touches registrations it owns (Meta
`managed-by=discovery-registrator` and `registrator=<--id>`), and it never exits because
Docker or Consul is down: it retries with backoff until they are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import consul.aio
from consul.check import Check
from consul.exceptions import ACLPermissionDenied, NotFound

from discovery import cli, metrics
from discovery.consul_api import TRANSIENT as CONSUL_TRANSIENT
from discovery.consul_api import QueryRules, backoff, connect, follow_index
from discovery.model import Registration
from discovery.register.config import RegistratorConfig
from discovery.register.containers import TRANSIENT as DOCKER_TRANSIENT
from discovery.register.containers import ContainerEvent, Containers
from discovery.register.labels import NotRegistrable, registration
from discovery.register.sync import owned, same, sync_plan

log = logging.getLogger("discovery.register")

# The readiness probe: quick while a container usually starts, then easy on one that never does.
PROBE_FAST, PROBE_FAST_FOR, PROBE_SLOW = 0.01, 2.0, 0.05  # seconds


class Registrator:
    def __init__(self, config: RegistratorConfig, containers: Containers, client: consul.aio.Consul,
                 owner: str) -> None:
        self.config = config
        self.containers = containers
        self.client = client
        self.owner = owner
        self.resync_now = asyncio.Event()
        # Consul's catalog went back in time (a snapshot restore): our agent still lists our
        # services and will not sync them again for a minute or more, so register them all anew.
        self.register_all = False
        self.refused: dict[str, str] = {}  # container id -> reason, to log each refusal once
        # Containers told to stop but still running (finishing requests): a reconcile in that
        # window must not register them again.
        self.stopping: set[str] = set()
        self.announcing: dict[str, asyncio.Task[None]] = {}  # service id -> readiness probe
        self.denied: set[str] = set()  # service ids Consul's ACLs refused, to log each once
        self._group: asyncio.TaskGroup | None = None
        self._http: aiohttp.ClientSession | None = None

    # --- Consul side

    async def register(self, reg: Registration, *, ready: bool) -> None:
        started = time.perf_counter()
        check = None
        if reg.check:
            check = Check.http(
                _check_url(reg), reg.check.interval,
                timeout=reg.check.timeout, deregister=self.config.deregister_after,
            )
            if ready:
                # Seen ready a moment ago: routable now, not one check interval later.
                check["Status"] = "passing"
        await self.client.agent.service.register(
            reg.name, service_id=reg.id, address=reg.address, port=reg.port, tags=list(reg.tags),
            check=check, meta=reg.meta,
        )
        metrics.REGISTRATIONS.labels("yes" if ready else "no").inc()
        log.info("registered %s (%s:%d, container %s, %s) in %.0f ms", reg.id, reg.address, reg.port,
                 reg.container[:12], "ready" if ready else "not ready yet: Consul's check decides",
                 (time.perf_counter() - started) * 1000)

    # --- readiness

    def announce(self, reg: Registration) -> None:
        """Register `reg` once it is ready, in the background; a newer announce replaces an older."""
        if (previous := self.announcing.pop(reg.id, None)) is not None:
            previous.cancel()
        assert self._group is not None, "announce() runs inside run()"
        self.announcing[reg.id] = self._group.create_task(self._announce(reg), name=f"announce:{reg.id}")

    def forget(self, container: str) -> list[str]:
        """Stop announcing a container that is stopping (our service IDs end with its short ID);
        the IDs it was announcing, whose registration may have reached Consul all the same."""
        cancelled = [sid for sid in self.announcing if sid.endswith(f"-{container[:12]}")]
        for service_id in cancelled:
            self.announcing.pop(service_id).cancel()
        return cancelled

    async def _announce(self, reg: Registration) -> None:
        try:
            ready = reg.check is None or await self.probe(reg)
            if reg.container not in self.stopping:
                await self.register(reg, ready=ready)
                self.denied.discard(reg.id)
        except ACLPermissionDenied as error:
            # Our token may not write this service (ADR 0006): retrying at once cannot help; the
            # periodic resync tries again, in case the policy is widened.
            metrics.REGISTRATOR_ERRORS.labels("acl").inc()
            if reg.id not in self.denied:
                log.error("%s not registered: Consul's ACLs refuse service %r to this registrator's token (%s)",
                          reg.id, reg.name, error)
            self.denied.add(reg.id)
        except (*CONSUL_TRANSIENT, *DOCKER_TRANSIENT) as error:
            metrics.REGISTRATOR_ERRORS.labels(_side(error)).inc()
            log.warning("%s not registered (%s): a resync follows", reg.id, error)
            self.resync_now.set()
        finally:
            if self.announcing.get(reg.id) is asyncio.current_task():
                del self.announcing[reg.id]

    async def probe(self, reg: Registration) -> bool:
        """Ask the instance's health endpoint until it answers 2xx, for at most --ready-timeout.

        The registrator's own probe (Consul's first check would only run up to one interval after
        registration): every PROBE_FAST for PROBE_FAST_FOR, then every PROBE_SLOW. At one probe
        every 50 ms the wait for the next probe alone was up to 50 ms of ready → routable, the
        whole of its p99 target; a refused connection to a port not yet open costs next to nothing."""
        assert reg.check is not None and self._http is not None
        url, timeout = _check_url(reg), aiohttp.ClientTimeout(total=cli.positive_seconds(reg.check.timeout))
        started = time.monotonic()
        give_up = started + self.config.ready_timeout
        while time.monotonic() < give_up:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with self._http.get(url, timeout=timeout, allow_redirects=False) as answer:
                    if 200 <= answer.status < 300:
                        return True
            await asyncio.sleep(PROBE_FAST if time.monotonic() - started < PROBE_FAST_FOR else PROBE_SLOW)
        log.warning("%s: %s not ready after %.0f s", reg.id, url, self.config.ready_timeout)
        return False

    async def deregister(self, service_id: str, why: str) -> None:
        started = time.perf_counter()
        await self.client.agent.service.deregister(service_id)
        metrics.DEREGISTRATIONS.labels(why.split(";")[0].removeprefix("container ")).inc()
        log.info("deregistered %s (%s) in %.0f ms", service_id, why, (time.perf_counter() - started) * 1000)

    async def registered(self) -> dict[str, dict[str, Any]]:
        return owned(await self.client.agent.services() or {}, self.owner)

    # --- reconcile

    def wanted(self, attrs: dict[str, Any]) -> Registration | None:
        container = attrs.get("Id", "")
        try:
            reg = registration(attrs, self.owner, self.config.network)
        except NotRegistrable as error:
            if self.refused.get(container) != str(error):
                log.warning("container %s (%s): not registered: %s", container[:12],
                            attrs.get("Name", "").lstrip("/"), error)
            self.refused[container] = str(error)
            return None
        self.refused.pop(container, None)
        return reg

    async def reconcile(self, why: str, everything: bool = False) -> None:
        """Both ways: register what runs and is missing, deregister what we own and is gone."""
        # Consul first, then Docker: a container that starts in between is then running but not
        # registered (registered now), never registered but not listed (deregistered by mistake).
        registered = await self.registered()
        running = await self.containers.running()
        self.stopping &= {attrs.get("Id", "") for attrs in running}
        wanted = [
            r for attrs in running
            if attrs.get("Id") not in self.stopping and (r := self.wanted(attrs)) is not None
        ]
        self.denied &= {r.id for r in wanted}  # forget refusals of containers that are gone
        plan = sync_plan(wanted, registered, everything)
        for reg in plan.register:
            if reg.id not in self.announcing:
                self.announce(reg)
        for service_id in plan.deregister:
            await self.deregister(service_id, f"no such running container; {why}")
        level = logging.INFO if not plan.empty or why == "start" else logging.DEBUG
        log.log(level, "reconciled (%s): %d container(s) registered, %d added or updated, %d removed",
                why, len(wanted), len(plan.register), len(plan.deregister))

    async def handle(self, event: ContainerEvent) -> None:
        metrics.DOCKER_EVENTS.labels(event.action).inc()
        if event.stops:
            if event.action == "kill":
                self.stopping.add(event.container)
            announced = self.forget(event.container)
            # Our IDs embed the container ID, so a stop needs no inspect (the container may be gone).
            registered = await self.registered()
            mine = {sid for sid, s in registered.items() if (s.get("Meta") or {}).get("container") == event.container}
            for service_id in sorted(mine | set(announced)):
                with contextlib.suppress(NotFound):  # an announce cancelled before it registered
                    await self.deregister(service_id, f"container {event.action}")
        elif event.starts:
            self.stopping.discard(event.container)
            attrs = await self.containers.inspect(event.container)
            if attrs and (attrs.get("State") or {}).get("Running"):
                reg = self.wanted(attrs)
                if reg is not None and not same(reg, (await self.registered()).get(reg.id)):
                    self.announce(reg)

    # --- loops

    async def follow_events(self) -> None:
        """Docker's event stream, resumed from the last event seen after every break."""
        # From now on: Docker replays what happens while the first reconcile lists containers.
        since = time.time_ns()
        failures = 0
        while True:
            try:
                if failures:
                    self.resync_now.set()  # whatever the replay cannot tell is reconciled
                async for event in self.containers.events(since):
                    failures = 0
                    since = max(since, event.time_nano)
                    try:
                        await self.handle(event)
                    except (*CONSUL_TRANSIENT, *DOCKER_TRANSIENT) as error:
                        metrics.REGISTRATOR_ERRORS.labels(_side(error)).inc()
                        log.warning("event %s of %s not handled (%s): a resync follows",
                                    event.action, event.container[:12], error)
                        self.resync_now.set()
            except DOCKER_TRANSIENT as error:
                metrics.REGISTRATOR_ERRORS.labels("docker").inc()
                failures += 1
                delay = backoff(failures, 0.25, self.config.backoff_max)
                log.warning("Docker event stream broken (%s); resuming in %.1fs", error, delay)
                await asyncio.sleep(delay)

    async def follow_consul(self, wait: float = 5.0) -> None:
        """A Consul that restarted (data kept or wiped) or was restored from a snapshot may have
        lost our registrations: reconcile as soon as it answers again, not at the next --resync.
        A short blocking query notices both: an outage breaks it, a restore sends its index back.
        The watcher's loop (`follow_index`) runs it: Consul's index rules, backoff, no busy loop."""
        last = 0

        def answered(_: str, index: int, failed: int) -> None:
            nonlocal last
            backwards = 1 <= index < last  # an index of 0 is Consul's bug, not a restore
            if failed or backwards:
                log.info("Consul %s: reconciling now", "answers again" if failed else "index went backwards")
                self.register_all |= backwards
                self.resync_now.set()
            last = index

        async def fetch(index: int) -> tuple[int, dict[str, Any]]:
            returned, services = await self.client.catalog.services(index=index or None, wait=f"{wait:g}s")
            return int(returned), services or {}

        rules = QueryRules(wait=wait, backoff_base=0.25, backoff_max=self.config.backoff_max)
        async for _ in follow_index(fetch, "registrator: catalog", rules, answered):
            pass

    async def resync_loop(self) -> None:
        failures = 0
        why = "start"
        while True:
            self.resync_now.clear()  # a request made while this reconcile runs is not lost
            everything, self.register_all = self.register_all, False
            try:
                await self.reconcile(why, everything)
                failures = 0
            except (*CONSUL_TRANSIENT, *DOCKER_TRANSIENT) as error:
                self.register_all |= everything  # still owed to a restored Consul
                metrics.REGISTRATOR_ERRORS.labels(_side(error)).inc()
                failures += 1
                delay = backoff(failures, 0.25, self.config.backoff_max)
                log.warning("reconcile failed (%s: %s); retry %d in %.1fs", type(error).__name__, error,
                            failures, delay)
                await asyncio.sleep(delay)
                why = "retry"
                continue
            try:
                async with asyncio.timeout(self.config.resync):
                    await self.resync_now.wait()
                why = "after a missed event or reconnect"
            except TimeoutError:
                why = "periodic"

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as group:
            self._http, self._group = http, group
            group.create_task(self.resync_loop(), name="resync")
            group.create_task(self.follow_events(), name="events")
            group.create_task(self.follow_consul(), name="consul")


def _side(error: BaseException) -> str:
    return "docker" if isinstance(error, DOCKER_TRANSIENT) else "consul"


def _check_url(reg: Registration) -> str:
    assert reg.check is not None
    host = f"[{reg.address}]" if ":" in reg.address else reg.address
    return f"http://{host}:{reg.port}{reg.check.path}"


async def serve(config: RegistratorConfig) -> int:
    containers = Containers(config.docker_url, config.only_label)
    owner = config.owner
    failures = 0
    while owner is None:
        try:
            owner = await containers.host_name()
        except DOCKER_TRANSIENT as error:
            failures += 1
            delay = backoff(failures, 0.25, config.backoff_max)
            log.warning("Docker unreachable (%s); retry in %.1fs", error, delay)
            await asyncio.sleep(delay)
    # Agent calls answer at once: a hung Consul must not hold a stop event for a blocking
    # query's timeout.
    client = connect(config.consul, config.token, timeout=10.0)
    log.info("registering containers of %s into %s as %r", config.docker_url or "local Docker", config.consul, owner)
    server = await metrics.serve(metrics.app(), config.listen) if config.listen else None
    try:
        await Registrator(config, containers, client, owner).run()
    finally:
        await client.close()
        if server:
            await server.cleanup()
    return cli.EXIT_OK
