"""The check after the fact of a file written for Runtime API changes.

A Runtime API change writes the file and tells HAProxy without `haproxy -c` first: that costs
~30 ms of CPU, which competed with HAProxy serving a new server its first requests (the
benchmark's traces, ADR 0005). A file that differs from a validated one only by server lines of
validated values cannot break; if it ever does, this says so loudly, since the next reload would
refuse it. The same pass makes the file's rename durable (`write_atomic(durable=False)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from discovery import metrics
from discovery.files import sync_directory
from discovery.haproxy.binary import validate
from discovery.haproxy.errors import HAProxyError

log = logging.getLogger("discovery.watch")

QUIET = 0.5  # seconds without a Runtime API change before the written file is checked
AT_MOST = 5.0  # seconds: under changes that never pause, it is checked this often all the same


class PostCheck:
    def __init__(self, output: Path, haproxy_bin: str, written: Callable[[], str | None]) -> None:
        self.output = output
        self.haproxy_bin = haproxy_bin
        self.written = written  # the text last written for HAProxy (None: nothing to check)
        self.pending = asyncio.Event()

    def due(self) -> None:
        """A file was written for a Runtime API change."""
        self.pending.set()

    async def run(self, quiet: float = QUIET, at_most: float = AT_MOST) -> None:
        """For ever: check once changes have been quiet for `quiet`, or `at_most` after the first."""
        while True:
            await self.pending.wait()
            deadline = time.monotonic() + at_most
            while time.monotonic() < deadline:
                self.pending.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(quiet):
                        await self.pending.wait()
                if not self.pending.is_set():
                    break
            self.pending.clear()
            await self.check()

    async def check(self) -> None:
        if (text := self.written()) is None:
            return
        try:
            await asyncio.to_thread(sync_directory, self.output.parent)
            await validate(text, self.haproxy_bin, self.output.parent)
        except (HAProxyError, OSError) as error:  # ConfigInvalid is an HAProxyError
            log.error("the config written for a Runtime API change does not validate (%s): %s",
                      type(error).__name__, error)
            metrics.APPLY_ERRORS.labels("post-check").inc()
