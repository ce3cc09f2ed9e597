import pytest

from discovery.haproxy.errors import HAProxyError, HAProxyUnreachable
from discovery.haproxy.sockets import HAProxySockets, ProcessTable, RuntimeAPI
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
