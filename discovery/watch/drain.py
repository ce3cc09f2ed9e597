"""The drain rule: when a server that left Consul may leave HAProxy. Pure, no IO.

A removed server is first put in `drain` (no new requests, its own finish); it is deleted once
its last request and queued request ended, or cut at its deadline (`--drain-timeout`) so that a
hung client cannot keep it for ever.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from discovery.model import Instance, ServerKey


@dataclass(frozen=True, slots=True)
class Drain:
    """A server draining since `since`, to be cut at `deadline` (monotonic seconds)."""

    instance: Instance
    since: float
    deadline: float

    @property
    def key(self) -> ServerKey:
        return ServerKey.of(self.instance)


class DrainStep(enum.Enum):
    WAIT = "wait"  # requests in flight, deadline not reached
    DELETE = "delete"  # nothing left in flight: delete it
    CUT = "cut"  # the deadline passed with requests in flight: cut them, then delete
    FORGET = "forget"  # HAProxy no longer has it (a reload ended it): only forget it


def drain_step(drain: Drain, busy: int | None, now: float) -> DrainStep:
    """What to do with `drain` now; `busy` is its requests in flight and queued, None when HAProxy
    no longer lists the server."""
    if busy is None:
        return DrainStep.FORGET
    if busy and now < drain.deadline:
        return DrainStep.WAIT
    return DrainStep.CUT if busy else DrainStep.DELETE
