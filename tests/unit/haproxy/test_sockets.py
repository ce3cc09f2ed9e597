import asyncio
import socket
import time

import pytest

from discovery.haproxy.errors import HAProxyError, HAProxyUnreachable
from discovery.haproxy.sockets import HAProxySockets, MasterCLI, ProcessTable, RuntimeAPI
from discovery.model import ServerKey

SHOW_PROC_26 = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "22129           master          1 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "22132           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "22100           worker          1               0d00h00m05s     2.6.12\n"
    "# programs\n"
    "\n"
)


SHOW_PROC_30 = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "8               master          3               0d00h12m40s     3.0.5-1\n"
    "# workers\n"
    "41              worker          0               0d00h00m02s     3.0.5-1\n"
    "# programs\n"
    "\n"
)


SHOW_PROC_FAILED = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "22129           master          4 [failed: 2]   0d00h03m11s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "22180           worker          1               0d00h01m00s     2.6.12-1+deb12u4\n"
    "22190           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "# programs\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SHOW_PROC_26, ProcessTable(master_reloads=1, failed_reloads=0, workers=((22132, 0),))),
        (SHOW_PROC_30, ProcessTable(master_reloads=3, failed_reloads=0, workers=((41, 0),))),
        (SHOW_PROC_FAILED, ProcessTable(master_reloads=4, failed_reloads=2, workers=((22180, 1), (22190, 0)))),
    ],
    ids=["2.6-old-workers-excluded", "3.0-without-failed", "failed-reloads"],
)
def test_show_proc_is_parsed(text, expected):
    assert ProcessTable.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Unknown command, but maybe one of the following ones is a better match:\n",
     "master 1 [failed: 0]\n", "#<PID> <type>\n# workers\n22132 worker 0 0d00h00m01s 2.6.12\n"],
    ids=["empty", "unknown-command", "no-pid", "no-master"],
)
def test_unexpected_show_proc_answer_raises(text):
    with pytest.raises(HAProxyError, match="show proc"):
        ProcessTable.parse(text)


def test_the_handles_are_built_once_from_two_paths(tmp_path):
    sockets = HAProxySockets.at(tmp_path / "master.sock", tmp_path / "admin.sock")
    assert sockets.master.socket_path == tmp_path / "master.sock"
    assert sockets.runtime.socket_path == tmp_path / "admin.sock"


async def test_a_runtime_command_names_the_server_backend_slash_server(tmp_path):
    with pytest.raises(HAProxyUnreachable, match="runtime socket"):  # nothing listens: said, not hung
        await RuntimeAPI(tmp_path / "none.sock").set_state(ServerKey("be_web", "web-1"), "drain")
    with pytest.raises(HAProxyError, match="separator"):
        await RuntimeAPI(tmp_path / "none.sock").set_state(ServerKey("be_web", "x;y"), "drain")


async def test_a_master_between_two_lives_is_waited_for_not_taken_for_gone(tmp_path):
    """The master re-executes itself on a reload: its socket refuses for a moment, then answers."""
    path = tmp_path / "master.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))  # the file is there, nothing accepts yet: connect() is refused

    async def come_back() -> None:
        await asyncio.sleep(0.3)
        listener.close()
        path.unlink()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(SHOW_PROC_26.encode())
            writer.close()

        servers.append(await asyncio.start_unix_server(answer, str(path)))

    servers: list[asyncio.Server] = []
    back = asyncio.create_task(come_back())
    try:
        table = await MasterCLI(path, reexec_grace=5.0).processes()
    finally:
        await back
        servers[0].close()
    assert table.master_reloads == 1


async def test_a_socket_nobody_accepts_on_is_unreachable_after_the_grace(tmp_path):
    path = tmp_path / "master.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # HAProxy gone, its socket file left behind
        started = time.monotonic()
        with pytest.raises(HAProxyUnreachable, match="refused"):
            await MasterCLI(path, reexec_grace=0.3).processes()
        assert 0.3 <= time.monotonic() - started < 2


async def test_no_socket_file_is_unreachable_at_once(tmp_path):
    started = time.monotonic()
    with pytest.raises(HAProxyUnreachable):
        await MasterCLI(tmp_path / "none.sock", reexec_grace=5.0).processes()
    assert time.monotonic() - started < 1
