"""The registrator's reconcile rule: what to (re-)register and deregister so that Consul's agent
holds exactly the registrations wanted. Pure, no IO."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from discovery.model import OWNER_META, OWNER_VALUE, Registration


@dataclass(frozen=True, slots=True)
class SyncPlan:
    register: tuple[Registration, ...]
    deregister: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.register or self.deregister)


def owned(services: dict[str, dict[str, Any]], owner: str) -> dict[str, dict[str, Any]]:
    """The agent's registrations that this registrator made; everything else is left alone."""
    return {
        service_id: service
        for service_id, service in services.items()
        if (service.get("Meta") or {}).get(OWNER_META) == OWNER_VALUE
        and (service.get("Meta") or {}).get("registrator") == owner
    }


def sync_plan(wanted: Iterable[Registration], registered: dict[str, dict[str, Any]],
              everything: bool = False) -> SyncPlan:
    """Pure: what to (re-)register and deregister so that Consul holds exactly `wanted`;
    `everything` registers all of `wanted` again, even what the agent already lists."""
    wanted_by_id = {r.id: r for r in wanted}
    register = tuple(
        r for service_id, r in sorted(wanted_by_id.items())
        if everything or not same(r, registered.get(service_id))
    )
    deregister = tuple(sorted(registered.keys() - wanted_by_id.keys()))
    return SyncPlan(register, deregister)


def same(wanted: Registration, current: dict[str, Any] | None) -> bool:
    if current is None:
        return False
    return (
        current.get("Service") == wanted.name
        and current.get("Address") == wanted.address
        and current.get("Port") == wanted.port
        and sorted(current.get("Tags") or []) == list(wanted.tags)
        and (current.get("Meta") or {}) == wanted.meta
    )
