"""What changes between the state HAProxy serves and the state Consul wants. Pure, no IO.

The watcher logs one line per applied change from `Change.summary()`, and `Change.structural`
tells a membership change (servers come and go inside existing backends) from one that alters
the shape of the configuration (backends, routes, the default service).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from discovery.model import DesiredState, Instance, Service


@dataclass(frozen=True, slots=True)
class Change:
    added_services: tuple[str, ...] = ()
    removed_services: tuple[str, ...] = ()
    rerouted_services: tuple[str, ...] = ()
    added_instances: tuple[Instance, ...] = ()
    removed_instances: tuple[Instance, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.added_services
            or self.removed_services
            or self.rerouted_services
            or self.added_instances
            or self.removed_instances
        )

    @property
    def structural(self) -> bool:
        return bool(self.added_services or self.removed_services or self.rerouted_services)

    def summary(self) -> str:
        parts = [f"+service {name}" for name in self.added_services]
        parts += [f"-service {name}" for name in self.removed_services]
        parts += [f"~routes {name}" for name in self.rerouted_services]
        parts += [f"+{i.server_name} {i.endpoint} ({i.service})" for i in self.added_instances]
        parts += [f"-{i.server_name} {i.endpoint} ({i.service})" for i in self.removed_instances]
        return ", ".join(parts) or "no change"


def diff(current: DesiredState | None, desired: DesiredState) -> Change:
    """The change that takes `current` (None: nothing known yet) to `desired`."""
    before = {s.name: s for s in current.services} if current else {}
    after = {s.name: s for s in desired.services}
    added_instances: list[Instance] = []
    removed_instances: list[Instance] = []
    rerouted: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        old_set = set(old.instances) if old else set()
        new_set = set(new.instances) if new else set()
        added_instances += sorted(new_set - old_set)
        removed_instances += sorted(old_set - new_set)
        if old and new and _routing(old) != _routing(new):
            rerouted.append(name)
    return Change(
        added_services=tuple(sorted(after.keys() - before.keys())),
        removed_services=tuple(sorted(before.keys() - after.keys())),
        rerouted_services=tuple(rerouted),
        added_instances=tuple(added_instances),
        removed_instances=tuple(removed_instances),
    )


def _routing(service: Service) -> tuple[object, ...]:
    return (service.routes, service.is_default)


@dataclass(frozen=True, slots=True)
class Membership:
    """Runtime API steps for a change that leaves the shape of the configuration alone."""

    add: tuple[Instance, ...] = ()
    drain: tuple[Instance, ...] = ()
    undrain: tuple[Instance, ...] = ()  # back in Consul while still draining: serve again


def membership(change: Change, draining: Iterable[Instance]) -> Membership | None:
    """The Runtime API steps for `change`, or None when only a reload can apply it."""
    if change.structural:
        return None
    removed = {(i.service, i.server_name) for i in change.removed_instances}
    if any((i.service, i.server_name) in removed for i in change.added_instances):
        return None  # one server, a new address: the runtime cannot re-address every family
    still_draining = {(i.service, i.server_name): i for i in draining}
    add: list[Instance] = []
    undrain: list[Instance] = []
    for instance in change.added_instances:
        previous = still_draining.get((instance.service, instance.server_name))
        if previous is None:
            add.append(instance)
        elif previous == instance:
            undrain.append(instance)
        else:
            return None
    return Membership(tuple(add), change.removed_instances, tuple(undrain))


def with_draining(state: DesiredState, draining: Iterable[Instance]) -> DesiredState:
    """What HAProxy should hold: Consul's state plus the servers still draining, so that the file
    on disk always lists every server the running HAProxy has."""
    by_service: dict[str, list[Instance]] = {}
    for instance in draining:
        by_service.setdefault(instance.service, []).append(instance)
    services = []
    for service in state.services:
        serving = {i.server_name for i in service.instances}
        extra = tuple(i for i in by_service.get(service.name, ()) if i.server_name not in serving)
        services.append(replace(service, draining=extra) if extra else service)
    return DesiredState(tuple(services))
