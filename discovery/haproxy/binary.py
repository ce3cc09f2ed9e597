"""HAProxy's binary: `haproxy -c` on a candidate config, and an HAProxy master process owned
by the watcher (`--manage-haproxy`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

from discovery.haproxy.errors import ConfigInvalid, HAProxyError
from discovery.haproxy.sockets import MasterCLI

log = logging.getLogger(__name__)


async def validate(text: str, haproxy_bin: str = "haproxy", directory: Path | None = None) -> None:
    """Run `haproxy -c` on a candidate before anything else sees it."""
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", dir=directory, delete=False) as candidate:
        candidate.write(text)
    try:
        process = await asyncio.create_subprocess_exec(
            haproxy_bin, "-c", "-f", candidate.name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    except FileNotFoundError:
        raise HAProxyError(f"cannot run {haproxy_bin!r}: not found (set --haproxy-bin)") from None
    finally:
        os.unlink(candidate.name)
    if process.returncode != 0:
        detail = output.decode(errors="replace").replace(candidate.name, "<candidate>").strip()
        raise ConfigInvalid(detail or f"haproxy -c exited with {process.returncode}")


class ManagedHAProxy:
    """An HAProxy master process owned by the watcher (`--manage-haproxy`)."""

    def __init__(self, haproxy_bin: str, config: Path, master_socket: Path, log: int | None = None) -> None:
        self.haproxy_bin = haproxy_bin
        self.config = config
        self.master_socket = master_socket
        self.log = log  # where HAProxy's own messages go: a file descriptor, or our stderr
        self.process: asyncio.subprocess.Process | None = None
        self.started = asyncio.Event()
        self.stopping = False

    async def start(self, within: float = 10.0) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.master_socket.unlink()
        self.process = await asyncio.create_subprocess_exec(
            self.haproxy_bin, "-W", "-db", "-S", f"{self.master_socket},mode,600", "-f", str(self.config),
            stdout=self.log, stderr=self.log,
        )
        cli = MasterCLI(self.master_socket)
        give_up = time.monotonic() + within
        while time.monotonic() < give_up:
            if self.process.returncode is not None:
                raise HAProxyError(f"haproxy exited with {self.process.returncode} at start")
            with contextlib.suppress(HAProxyError):
                if (await cli.processes()).workers:
                    log.info("haproxy started (pid %d)", self.process.pid)
                    self.started.set()
                    return
            await asyncio.sleep(0.05)
        raise HAProxyError(f"haproxy did not start within {within:.0f}s")

    async def stop(self, within: float = 40.0) -> None:
        """Soft stop (SIGUSR1): listeners close, workers finish their requests (bounded by
        hard-stop-after), then the master exits; killed if it outlives `within`."""
        if self.process is None or self.process.returncode is not None:
            return
        self.stopping = True
        try:
            async with asyncio.timeout(within):
                # Again every second: a signal that lands while the master re-executes itself
                # for a reload is lost.
                while self.process.returncode is None:
                    self.process.send_signal(signal.SIGUSR1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        log.info("haproxy stopped")

    async def supervise(self) -> None:
        """Raise if the HAProxy we own exits without being asked: nothing would serve, and
        every later change would only be written to a file."""
        await self.started.wait()
        assert self.process is not None
        code = await self.process.wait()
        if not self.stopping:
            raise HAProxyError(f"haproxy exited unexpectedly with {code}")
