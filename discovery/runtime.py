"""HAProxy's Runtime API (the admin `stats socket`, unix only): membership changes without a
reload, and the server state that survives one.

Commands and answers are the same on HAProxy 2.6 and 3.0 for what is used here:
`add server`, `enable server`, `enable health`, `set server ... state drain|maint|ready`,
`shutdown sessions server`, `del server`, `show servers state`, `show stat`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from discovery.haproxy import HAProxyError, one_command

# Answers that mean a command did what it was asked (HAProxy answers nothing for most commands).
_OK = ("", "New server registered.", "Server deleted.")


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

    async def add_server(self, backend: str, name: str, arguments: str, checked: bool) -> None:
        """Add a server and put it in service: dynamic servers start in maintenance, unchecked."""
        await self._expect_ok(f"add server {backend}/{name} {arguments}")
        if checked:
            await self._expect_ok(f"enable health {backend}/{name}")
        await self._expect_ok(f"enable server {backend}/{name}")

    async def set_state(self, backend: str, name: str, state: str) -> None:
        await self._expect_ok(f"set server {backend}/{name} state {state}")

    async def delete_server(self, backend: str, name: str, *, force: bool) -> None:
        """Maintenance, then (when `force`) cut what is left, then delete."""
        await self.set_state(backend, name, "maint")
        if force:
            await self._expect_ok(f"shutdown sessions server {backend}/{name}")
        await self._expect_ok(f"del server {backend}/{name}")

    async def stats(self) -> dict[tuple[str, str], ServerStats]:
        text = await self.command("show stat")
        rows = csv.DictReader(line.removeprefix("# ") for line in text.splitlines() if line)
        found = {}
        for row in rows:
            if row.get("svname") in ("FRONTEND", "BACKEND", None):
                continue
            key = (row["pxname"], row["svname"])
            found[key] = ServerStats(key[0], key[1], row.get("status", ""), int(row.get("scur") or 0),
                                     int(row.get("qcur") or 0))
        return found

    async def servers(self) -> set[tuple[str, str, str]]:
        """(backend, server, address) of every server HAProxy runs now (see `render.file_servers`)."""
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
