"""At most N reloads a minute: a flapping template or catalog must not exhaust HAProxy (each
reload leaves an old worker finishing its connections). Pure: the caller passes the time."""

from __future__ import annotations

import collections

WINDOW = 60.0  # seconds


class ReloadCap:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: collections.deque[float] = collections.deque()

    def _forget(self, now: float) -> None:
        while self._times and now - self._times[0] > WINDOW:
            self._times.popleft()

    def wait(self, now: float) -> float:
        """Seconds to wait before the next reload may go out (0: at once)."""
        self._forget(now)
        if len(self._times) < self.per_minute:
            return 0.0
        return WINDOW - (now - self._times[0])

    def record(self, now: float) -> None:
        self._times.append(now)

    def in_last_minute(self, now: float) -> int:
        return sum(1 for t in self._times if now - t <= WINDOW)
