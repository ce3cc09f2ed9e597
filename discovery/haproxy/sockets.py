"""HAProxy's two sockets, and every answer they give parsed here: the master CLI (`show proc`,
`reload`) and the Runtime API (the admin `stats socket`: membership changes without a reload,
and the server state that survives one).

Works with HAProxy 2.6 and 3.0. The master CLI's `reload` answers `Success=1|0` synchronously
only from 2.7 on; with 2.6 it answers nothing, so the outcome is read from `show proc`: the
master's reload counter moves and a fresh worker appears, or its `failed` counter moves.
Runtime API commands and answers are the same on 2.6 and 3.0 for what is used here:
`add server`, `enable server`, `enable health`, `set server ... state drain|maint|ready`,
`shutdown sessions server`, `del server`, `show servers state`, `show stat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import re
import time
from dataclasses import dataclass
from pathlib import Path

from discovery.haproxy.errors import HAProxyError, HAProxyUnreachable, ReloadFailed, SocketRefused
from discovery.model import ServerKey

# Answers that mean a Runtime API command did what it was asked (most answer nothing).
_OK = ("", "New server registered.", "Server deleted.")


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
    except ConnectionRefusedError as error:
        raise SocketRefused(f"{what} {socket_path}: {error}") from None
    except FileNotFoundError as error:
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
    """The master process's CLI socket (`haproxy -W -S <path>`).

    The master re-executes itself on every reload, whoever asked for it; until the new one listens,
    its socket refuses connections (46 ms median, 73 ms at most over 40 reloads of HAProxy 2.6 on
    an idle 2-core machine). A refused connection is therefore tried again for `reexec_grace`
    seconds (27x that longest window, for a loaded machine) before HAProxy is taken for gone: a
    command sent in that window — ours or anyone's — waits instead of failing. A missing socket
    file is "not running" at once."""

    def __init__(self, socket_path: Path, timeout: float = 10.0, reexec_grace: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.reexec_grace = reexec_grace

    async def command(self, line: str) -> str:
        give_up = time.monotonic() + self.reexec_grace
        while True:
            try:
                # Only a refused connect is retried: the line was not sent, so no command runs twice.
                return await one_command(self.socket_path, line, self.timeout, "master socket")
            except SocketRefused:
                if time.monotonic() >= give_up:
                    raise
                await asyncio.sleep(0.02)

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


@dataclass(frozen=True, slots=True)
class ServerStats:
    """One server's live figures from `show stat`."""

    backend: str
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, "UP 1/2"...
    sessions: int  # scur: connections in use now
    queued: int  # qcur


def endpoint(address: str, port: str) -> str:
    """`address:port` as the file writes it: IPv6 in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class RuntimeAPI:
    """The admin socket; every command on its own connection (see `one_command`)."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def command(self, line: str) -> str:
        if "\n" in line or ";" in line:
            raise HAProxyError(f"refusing a Runtime API command with a separator: {line!r}")
        return (await one_command(self.socket_path, line, self.timeout, "runtime socket")).strip()

    async def _expect_ok(self, line: str) -> None:
        answer = await self.command(line)
        if answer not in _OK:
            raise HAProxyError(f"`{line}`: {answer}")

    async def add_server(self, key: ServerKey, arguments: str, checked: bool) -> None:
        """Add a server and put it in service: dynamic servers start in maintenance, unchecked."""
        await self._expect_ok(f"add server {key} {arguments}")
        if checked:
            await self._expect_ok(f"enable health {key}")
        await self._expect_ok(f"enable server {key}")

    async def set_state(self, key: ServerKey, state: str) -> None:
        await self._expect_ok(f"set server {key} state {state}")

    async def delete_server(self, key: ServerKey, *, force: bool) -> None:
        """Maintenance, then (when `force`) cut what is left, then delete."""
        await self.set_state(key, "maint")
        if force:
            await self._expect_ok(f"shutdown sessions server {key}")
        await self._expect_ok(f"del server {key}")

    async def stats(self) -> dict[ServerKey, ServerStats]:
        text = await self.command("show stat")
        rows = csv.DictReader(line.removeprefix("# ") for line in text.splitlines() if line)
        found = {}
        for row in rows:
            if row.get("svname") in ("FRONTEND", "BACKEND", None):
                continue
            key = ServerKey(row["pxname"], row["svname"])
            found[key] = ServerStats(key[0], key[1], row.get("status", ""), int(row.get("scur") or 0),
                                     int(row.get("qcur") or 0))
        return found

    async def servers(self) -> set[tuple[str, str, str]]:
        """(backend, server, address) of every server HAProxy runs now (see `config.file_servers`)."""
        found = set()
        for line in (await self.server_state()).splitlines()[1:]:
            words = line.split()
            if len(words) > 18 and not line.startswith("#"):
                found.add((words[1], words[3], endpoint(words[4], words[18])))
        return found

    async def server_state(self) -> str:
        """`show servers state`, in the format `load-server-state-from-file` reads."""
        text = await self.command("show servers state")
        if not text.startswith("1"):
            raise HAProxyError(f"unexpected `show servers state` answer: {text[:200]!r}")
        return text + "\n"


@dataclass(frozen=True, slots=True)
class HAProxySockets:
    """The handles on one running HAProxy, built once from the watcher's configuration."""

    master: MasterCLI
    runtime: RuntimeAPI

    @classmethod
    def at(cls, master_socket: Path, runtime_socket: Path) -> HAProxySockets:
        return cls(MasterCLI(master_socket), RuntimeAPI(runtime_socket))
