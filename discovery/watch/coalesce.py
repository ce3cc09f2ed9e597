"""Coalescing: a burst of catalog changes becomes one apply. Pure timing rules plus the mailbox
that holds the newest snapshot until the apply loop takes it."""

from __future__ import annotations

import asyncio
import time

from discovery.model import CatalogEntry


def apply_at(first: float, last: float, applied: float | None, wait_min: float, wait_max: float) -> float:
    """When to apply pending changes (monotonic seconds): min/max quiescence with a leading edge.

    The first change after a quiet period goes out at once, so a lone change costs no latency;
    changes arriving within `wait_min` of an apply are batched until things stay quiet for
    `wait_min`, but never held longer than `wait_max` after the first of them.
    """
    if applied is None or first - applied >= wait_min:
        return first
    return min(last + wait_min, first + wait_max)


def burst_span(wait_min: float, wait_max: float) -> float:
    """How far apart two applies of one burst can be (`apply_at`: the leading edge at once, the
    rest up to `wait_max` after a change that came up to `wait_min` later), with a margin: the
    shrink guard's window, so that a loss split across them counts as one."""
    return wait_max + wait_min + 0.5


class Mailbox:
    """The newest catalog snapshot and why it changed; a burst of puts is read as one."""

    def __init__(self) -> None:
        self.snapshot: tuple[CatalogEntry, ...] | None = None
        self.reasons: list[str] = []
        self.first = self.last = 0.0
        self.changed = asyncio.Event()
        self.arrived = asyncio.Event()  # set by every put; lets a waiter extend its quiet period

    def put(self, snapshot: tuple[CatalogEntry, ...] | None, reason: str) -> None:
        now = time.monotonic()
        if not self.changed.is_set():
            self.first = now
        self.last = now
        if snapshot is not None:
            self.snapshot = snapshot
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.changed.set()
        self.arrived.set()

    def take(self) -> tuple[tuple[CatalogEntry, ...] | None, list[str]]:
        reasons, self.reasons = self.reasons, []
        self.changed.clear()
        return self.snapshot, reasons
