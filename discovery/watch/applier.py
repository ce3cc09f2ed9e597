"""Applying a desired state to a running HAProxy, keeping the last good configuration.

Membership changes (servers joining or leaving existing backends) go through the Runtime API
with no reload: a new server is added and enabled, a removed one is drained, then deleted once
its last request ended (or at the drain deadline). Anything else — a new or removed backend,
routes, the template — is a seamless master-worker reload, rate-limited, with the servers'
state saved first. Either way the file on disk is rendered, validated and written so that it
always lists exactly the servers the running HAProxy has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from discovery import metrics
from discovery.files import write_atomic
from discovery.haproxy.binary import validate
from discovery.haproxy.config import (
    Renderer,
    RenderSettings,
    Stamp,
    TemplateError,
    file_servers,
    served_state,
    server_arguments,
)
from discovery.haproxy.errors import ConfigInvalid, HAProxyError, HAProxyUnreachable
from discovery.haproxy.sockets import HAProxySockets
from discovery.model import DesiredState, ServerKey
from discovery.watch.drain import Drain, DrainStep, drain_step
from discovery.watch.plan import Change, Membership, diff, membership, with_draining
from discovery.watch.post_check import PostCheck
from discovery.watch.reload_cap import ReloadCap
from discovery.watch.timeline import Timeline

log = logging.getLogger("discovery.watch")

APPLY_ERRORS = (TemplateError, ConfigInvalid, HAProxyError, OSError)


@dataclass(frozen=True, slots=True)
class ApplySettings:
    template: Path
    output: Path
    haproxy_bin: str = "haproxy"
    render: RenderSettings = field(default_factory=RenderSettings)
    drain_timeout: float = 30.0  # seconds a removed server may keep finishing requests
    max_reloads_per_minute: int = 30


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    action: str = ""  # "runtime", "reload", "written", "unchanged"


class Applier:
    def __init__(self, settings: ApplySettings, haproxy: HAProxySockets) -> None:
        self.settings = settings
        self.renderer = Renderer(settings.template)
        self.haproxy = haproxy
        # Whether HAProxy has been seen running: from then on the Runtime API is used. Until
        # attach() is called, HAProxy is not asked at all (a managed one not started yet).
        self.attached = False
        self.running = False
        self.applied: DesiredState | None = None  # Consul's view, as HAProxy serves it
        # What the adopted file serves, read back from it (after a watcher restart, until the
        # first apply): the shrink guard's "before", so a restart does not forget what ran.
        self.adopted: DesiredState | None = None
        self.loaded: str | None = None  # the text HAProxy is known to run
        # The templates' stamp when `loaded` was rendered (None: unknown, e.g. an adopted file).
        self._loaded_stamp: Stamp | None = None
        self.draining: dict[ServerKey, Drain] = {}
        self._reload_cap = ReloadCap(settings.max_reloads_per_minute)
        self.last_apply: dict[str, object] | None = None
        self.last_error: dict[str, object] | None = None
        self._lock = asyncio.Lock()  # applies and drain completions never interleave
        self.post_check = PostCheck(settings.output, settings.haproxy_bin, lambda: self.loaded)

    # --- start-up

    async def attach(self) -> None:
        """Talk to HAProxy from now on. When HAProxy already runs (after a watcher restart)
        and runs the servers the file on disk lists, adopting that file as loaded spares a
        needless reload. If they differ, a watcher stopped between writing the file and telling
        HAProxy: the first apply then reloads, so that nothing of that change is lost."""
        self.attached = True
        if not (await self._haproxy_up() and self.settings.output.exists()):
            return
        text = self.settings.output.read_text()
        try:
            running = await self.haproxy.runtime.servers()
        except HAProxyError as error:  # e.g. the admin socket not there yet: a reload is the safe side
            log.warning("cannot list HAProxy's servers (%s): the first apply reloads", error)
            return
        listed = file_servers(text)
        if running == listed:
            self.loaded, self._loaded_stamp = text, None
            self.adopted = served_state(text)
        else:
            log.warning("HAProxy runs other servers than %s lists (%d missing, %d extra): the first apply "
                        "reloads", self.settings.output, len(listed - running), len(running - listed))

    async def bootstrap(self) -> None:
        """With no config at all yet, write one with no services so that HAProxy can start and
        show its stats page while Consul is asked. An existing file is never replaced this way."""
        if self.settings.output.exists():
            return
        try:
            self._write(await self.candidate(DesiredState()))
        except APPLY_ERRORS as error:
            log.error("cannot write a first config (%s): %s", type(error).__name__, error)
            return
        log.info("no %s yet: wrote one with no services until Consul answers", self.settings.output)

    # --- applying

    def render(self, state: DesiredState) -> str:
        return self.renderer.render(state, self.settings.render)

    async def candidate(self, state: DesiredState) -> str:
        text = self.render(state)
        await validate(text, self.settings.haproxy_bin, self.settings.output.parent)
        return text

    async def apply(self, state: DesiredState, reasons: list[str], timeline: Timeline | None = None) -> Outcome:
        """Apply `state`; log one line saying what changed, why, how, and how long it took."""
        timeline = timeline or Timeline()
        async with self._lock:
            started = time.perf_counter()
            timeline.mark("locked")
            first = self.applied is None
            change = diff(self.applied, state)
            why = "; ".join(reasons) or "start"
            try:
                outcome = (await self._runtime_path(state, change, timeline)
                           or await self._reload_path(state, timeline))
            except APPLY_ERRORS as error:
                log.error("not applied, keeping the last good config (%s): %s; why: %s; change: %s",
                          type(error).__name__, error, why, change.summary())
                metrics.APPLY_ERRORS.labels(type(error).__name__).inc()
                self.last_error = {"at": _iso(), "error": f"{type(error).__name__}: {error}", "why": why}
                return Outcome(False)
            self.applied = state
            took = time.perf_counter() - started
            if outcome.action != "unchanged":
                what = (change.summary() if not change.empty
                        else "the first config" if first else "config (template or settings changed)")
                log.info("applied %s in %.1f ms (%s; %d instances in %d services); why: %s", what, took * 1000,
                         _ACTIONS[outcome.action], state.instance_count, len(state.services), why)
                metrics.CHANGES_APPLIED.labels(outcome.action).inc()
                metrics.APPLY_SECONDS.labels(outcome.action).observe(took)
                self.last_apply = {"at": _iso(), "what": what, "method": outcome.action,
                                   "milliseconds": round(took * 1000, 2), "why": why,
                                   "timeline": timeline.as_status()}
            self._export(state)
            if outcome.action == "runtime":
                self.post_check.due()
            return outcome

    @property
    def served(self) -> DesiredState | None:
        """What HAProxy serves as far as we know: the last apply, else the adopted file."""
        return self.applied if self.applied is not None else self.adopted

    def _export(self, state: DesiredState) -> None:
        metrics.INSTANCES.clear()
        for service in state.services:
            metrics.INSTANCES.labels(service.name).set(len(service.instances))
        metrics.DRAINING.set(len(self.draining))

    def status(self) -> dict[str, object]:
        """What `/status` shows of HAProxy's side."""
        serving = self._serving(self.applied) if self.applied else None
        return {
            "services": {
                s.name: {
                    "backend": s.backend,
                    "default": s.is_default,
                    "routes": [{"host": r.host, "path": r.path} for r in s.routes],
                    "instances": [{"server": i.server_name, "address": i.endpoint} for i in s.instances],
                    "draining": [{"server": i.server_name, "address": i.endpoint} for i in s.draining],
                }
                for s in (serving.services if serving else ())
            },
            "last_apply": self.last_apply,
            "last_error": self.last_error,
            "reloads_last_minute": self._reload_cap.in_last_minute(time.monotonic()),
        }

    async def _haproxy_up(self) -> bool:
        """Whether HAProxy runs now; the Runtime API is used from the moment it does. Only "no
        socket" or "refused" mean it does not run: any other failure (permissions, a hung
        master) is an error, never a reason to write a config nobody loads."""
        if not self.attached:
            return False
        try:
            await self.haproxy.master.processes()
        except HAProxyUnreachable:
            return False
        self.running = True
        return True

    async def _runtime_path(self, state: DesiredState, change: Change, timeline: Timeline) -> Outcome | None:
        """Membership through the Runtime API; None when this change needs a reload instead."""
        if self.applied is None or self.loaded is None or change.empty:
            return None
        if not self.running and not await self._haproxy_up():
            return None
        steps = membership(change, [d.instance for d in self.draining.values()])
        if steps is None:
            return None
        if not self._renders_as_loaded(self._serving(self.applied)):
            return None  # the template changed too: only a reload applies it
        # The drains this change makes, kept aside until it has been applied.
        now = time.monotonic()
        draining = {k: d for k, d in self.draining.items() if d.instance not in steps.undrain}
        draining |= {ServerKey.of(i): Drain(i, now, now + self.settings.drain_timeout) for i in steps.drain}
        text, stamp = self._render_stamped(with_draining(state, [d.instance for d in draining.values()]))
        if stamp is None:
            return None  # the template changed while rendering: only a reload applies it
        arguments = server_arguments(text, {ServerKey.of(i).backend for i in steps.add})
        if any(ServerKey.of(i) not in arguments for i in steps.add):
            return None  # a template naming backends its own way: a reload is the only way in
        timeline.mark("rendered")
        # The file first: HAProxy never has a server the file does not list, so a restart or a
        # reload at any moment converges to the same servers.
        self._write(text, durable=False)
        timeline.mark("written")
        try:
            await self._runtime_steps(steps, arguments)
        except HAProxyError as error:
            log.warning("Runtime API step failed (%s): reloading instead", error)
            return None
        timeline.mark("haproxy")
        self.draining, self.loaded, self._loaded_stamp = draining, text, stamp
        return Outcome(True, "runtime")

    async def _runtime_steps(self, steps: Membership, arguments: dict[ServerKey, str]) -> None:
        runtime = self.haproxy.runtime
        for instance in steps.add:
            key = ServerKey.of(instance)
            await runtime.add_server(key, arguments[key], checked="check" in arguments[key].split())
        for instance in steps.undrain:
            await runtime.set_state(ServerKey.of(instance), "ready")
        for instance in steps.drain:
            await runtime.set_state(ServerKey.of(instance), "drain")

    async def _reload_path(self, state: DesiredState, timeline: Timeline) -> Outcome:
        # Drains of backends that are gone end with the reload: the old worker finishes them.
        services = {s.name for s in state.services}
        draining = {k: d for k, d in self.draining.items() if d.instance.service in services}
        text, stamp = self._render_stamped(with_draining(state, [d.instance for d in draining.values()]))
        if text == self.loaded:  # before `haproxy -c`: most empty changes end here, for free
            self.draining, self._loaded_stamp = draining, stamp
            return Outcome(True, "unchanged")
        timeline.mark("rendered")
        await validate(text, self.settings.haproxy_bin, self.settings.output.parent)
        timeline.mark("validated")
        if not await self._haproxy_up():
            # Nothing to reload: HAProxy loads this file when it starts (its supervisor may be
            # waiting for exactly this file). What it runs stays unknown until it answers.
            self._write(text)
            self.draining, self.loaded, self._loaded_stamp = draining, None, None
            return Outcome(True, "written")
        await self._respect_reload_cap()  # before anything is written: the file never runs ahead
        await self._save_server_state()
        self._write(text)
        timeline.mark("written")
        try:
            await self.haproxy.master.reload()
        except HAProxyError:
            # Refused, or not confirmed: put back what HAProxy is known to run, so that a later
            # restart does not pick up a config that never ran; the change is retried.
            if self.loaded is not None:
                self._write(self.loaded)
            raise
        timeline.mark("haproxy")
        self._reload_cap.record(time.monotonic())
        self.draining, self.loaded, self._loaded_stamp = draining, text, stamp
        return Outcome(True, "reload")

    def _renders_as_loaded(self, serving: DesiredState) -> bool:
        """Whether the template renders `serving` (what HAProxy runs) as `loaded`: the template's
        stamp answers without a render (28 ms at 10,000 instances) once one render confirmed it."""
        if self.loaded is None:
            return False
        stamp = self.renderer.stamp()
        if stamp is not None and stamp == self._loaded_stamp:
            return True
        text, stamp = self._render_stamped(serving)
        same = text == self.loaded
        self._loaded_stamp = stamp if same else None
        return same

    def _render_stamped(self, state: DesiredState) -> tuple[str, Stamp | None]:
        return self.renderer.render_stamped(state, self.settings.render)

    def _write(self, text: str, durable: bool = True) -> None:
        """`durable=False` (Runtime API path): the data is on disk before the rename, the rename
        is made durable by the post-check a moment later; a power cut before that leaves the
        previous file, which a restarted watcher reconciles like any other."""
        # The stats page's password is in the file: readable by HAProxy's group, not by all.
        write_atomic(self.settings.output, text, 0o640 if self.settings.render.stats_password else None,
                     durable=durable)

    def _serving(self, state: DesiredState) -> DesiredState:
        return with_draining(state, [d.instance for d in self.draining.values()])

    async def _save_server_state(self) -> None:
        """Servers keep their state (drain, maintenance, health) across the reload."""
        path = self.settings.render.server_state_file
        if not path or not self.running:
            return
        try:
            write_atomic(Path(path), await self.haproxy.runtime.server_state())
        except (HAProxyError, OSError) as error:
            log.warning("server state not saved before the reload (%s): servers start fresh", error)

    async def _respect_reload_cap(self) -> None:
        if (delay := self._reload_cap.wait(time.monotonic())) > 0:
            log.warning("reload cap of %d a minute reached: waiting %.1f s", self._reload_cap.per_minute, delay)
            await asyncio.sleep(delay)

    # --- draining

    async def finish_drains(self) -> None:
        """Delete each draining server once it has no request left, or at its deadline."""
        if not self.draining or not self.running or self.applied is None:
            return
        async with self._lock:
            try:
                stats = await self.haproxy.runtime.stats()
            except HAProxyError as error:
                log.warning("cannot read server stats to finish drains: %s", error)
                return
            now = time.monotonic()
            before = [d.instance for d in self.draining.values()]
            finished: list[str] = []
            for key, drain in list(self.draining.items()):
                live = stats.get(key)
                busy = live.sessions + live.queued if live else None
                step = drain_step(drain, busy, now)
                if step is DrainStep.WAIT:
                    continue
                if step is not DrainStep.FORGET:
                    try:
                        await self.haproxy.runtime.delete_server(key, force=step is DrainStep.CUT)
                    except HAProxyError as error:
                        # e.g. sessions cut a moment ago are still closing: try again next time
                        log.debug("%s not deleted yet: %s", key, error)
                        continue
                del self.draining[key]
                cut = f", {busy} request(s) cut at the deadline" if step is DrainStep.CUT else ""
                finished.append(f"removed {key.server} from {key.backend} after "
                                f"{now - drain.since:.1f} s of draining{cut}")
            if not finished:
                return
            metrics.DRAINING.set(len(self.draining))
            # HAProxy no longer has them: now the file may stop listing them. Only while the file
            # is what HAProxy runs with this template; after a template edit, the reload that
            # applies the edit writes it.
            try:
                if self._renders_as_loaded(with_draining(self.applied, before)):
                    self.loaded, self._loaded_stamp = self._render_stamped(self._serving(self.applied))
                    self._write(self.loaded)
            except APPLY_ERRORS as error:
                log.error("config not rewritten after drains (%s): %s", type(error).__name__, error)
            for line in finished:
                log.info("%s", line)


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_ACTIONS = {"runtime": "Runtime API, no reload", "reload": "reloaded", "unchanged": "unchanged",
            "written": "written; HAProxy not running, it loads this file when it starts"}
