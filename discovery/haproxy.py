"""The HAProxy side: validate a candidate config, write it atomically, reload through the
master CLI, and optionally own the HAProxy process.

Works with HAProxy 2.6 and 3.0. The master CLI's `reload` answers `Success=1|0` synchronously
only from 2.7 on; with 2.6 it answers nothing, so the outcome is read from `show proc`: the
master's reload counter moves and a fresh worker appears, or its `failed` counter moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class HAProxyError(Exception):
    """HAProxy refused a config, a reload failed, or its socket could not be reached."""


class HAProxyUnreachable(HAProxyError):
    """Nothing listens on the socket (no file, or connection refused): HAProxy does not run."""


class ReloadFailed(HAProxyError):
    """HAProxy refused to load the new config and kept its previous workers."""


class ConfigInvalid(HAProxyError):
    """`haproxy -c` rejected a candidate configuration; the message holds its diagnostics."""


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


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Replace `path` so that a reader sees the old file or the new one, never a mix. `mode`
    forces the permissions (a file holding a secret); otherwise an existing file keeps its own."""
    directory = path.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, path.stat().st_mode & 0o777)
        if not path.exists():
            os.chmod(temporary, 0o644)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def one_command(socket_path: Path, line: str, within: float, what: str) -> str:
    """Send one command line on a fresh connection to an HAProxy CLI socket; return the answer.

    One command per connection, half-closed after the line: HAProxy's non-interactive CLI then
    answers and closes, so a slow command never blocks another caller."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                writer.write_eof()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (FileNotFoundError, ConnectionRefusedError) as error:
        raise HAProxyUnreachable(f"{what} {socket_path}: {error}") from None
    except (OSError, TimeoutError) as error:
        reason = str(error) or f"no answer within {within:g}s"
        raise HAProxyError(f"{what} {socket_path}: {reason}") from None
    return data.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class ProcessTable:
    """What the master CLI's `show proc` says."""

    master_reloads: int
    failed_reloads: int
    workers: tuple[tuple[int, int], ...]  # (pid, reloads) of current workers; 0 reloads = newest

    @classmethod
    def parse(cls, text: str) -> ProcessTable:
        master = re.search(r"^\d+\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?", text, re.M)
        if not master:
            raise HAProxyError(f"unexpected `show proc` answer: {text[:200]!r}")
        current = text.split("# old workers")[0]
        workers = tuple(
            (int(pid), int(reloads))
            for pid, reloads in re.findall(r"^(\d+)\s+worker\s+(\d+)", current, re.M)
        )
        return cls(int(master.group(1)), int(master.group(2) or 0), workers)


class MasterCLI:
    """The master process's CLI socket (`haproxy -W -S <path>`)."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def command(self, line: str) -> str:
        return await one_command(self.socket_path, line, self.timeout, "master socket")

    async def processes(self) -> ProcessTable:
        return ProcessTable.parse(await self.command("show proc"))

    async def reload(self, deadline: float = 15.0) -> None:
        """Seamless reload; returns once a new worker serves, raises if the reload failed."""
        before = await self.processes()
        answer = await self.command("reload")
        if answer.startswith("Success="):  # HAProxy >= 2.7 answers synchronously
            if not answer.startswith("Success=1"):
                raise ReloadFailed("reload failed: " + answer.partition("--")[2].strip()[-2000:])
            return
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            await asyncio.sleep(0.02)
            try:
                now = await self.processes()
            except HAProxyError:
                continue  # the master re-executes itself; its socket is briefly gone
            if now.failed_reloads > before.failed_reloads:
                raise ReloadFailed("reload failed: HAProxy kept the previous workers (see its log)")
            if now.master_reloads > before.master_reloads and any(r == 0 for _, r in now.workers):
                return
        raise HAProxyError(f"reload not confirmed within {deadline:.0f}s")


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
