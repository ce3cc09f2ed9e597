"""Where one apply's time went: named moments on the monotonic clock, from Consul's answer to
HAProxy's acknowledgement.

`/status` shows the last apply's timeline. The moments are `time.monotonic()` seconds — the
system-wide CLOCK_MONOTONIC on Linux — so that a process outside (the benchmark) can line them
up with its own clock: when it registered an instance, when the first request reached it.
"""

from __future__ import annotations

import itertools
import time


class Timeline:
    """Moments in the order they happened; each phase is the time since the moment before."""

    def __init__(self, **moments: float) -> None:
        self.moments: dict[str, float] = dict(moments)

    def mark(self, name: str) -> None:
        """A moment now; marked again (a Runtime API change that fell back to a reload), it moves
        to the end, so that phases stay in the order things happened."""
        self.moments.pop(name, None)
        self.moments[name] = time.monotonic()

    def phases_ms(self) -> dict[str, float]:
        """Milliseconds from each moment to the next, named after the later one."""
        names = list(self.moments)
        return {later: round((self.moments[later] - self.moments[earlier]) * 1000, 3)
                for earlier, later in itertools.pairwise(names)}

    def as_status(self) -> dict[str, object]:
        return {"moments": {name: round(at, 6) for name, at in self.moments.items()}, "phases_ms": self.phases_ms()}
