"""What changes between the state HAProxy serves and the state Consul wants. Pure, no IO.

The watcher logs one line per applied change from `Change.summary()`, and `Change.structural`
tells a membership change (servers come and go inside existing backends) from one that alters
the shape of the configuration (backends, routes, the default service).
"""

from __future__ import annotations

from dataclasses import dataclass

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
