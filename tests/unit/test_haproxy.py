import os

import pytest

from discovery.haproxy import HAProxyError, ProcessTable, write_atomic

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


# --- write_atomic


def mode(path):
    return os.stat(path).st_mode & 0o777


def test_new_file_gets_its_content_and_mode_644(tmp_path):
    target = tmp_path / "haproxy.cfg"
    write_atomic(target, "global\n")
    assert target.read_text() == "global\n"
    assert mode(target) == 0o644
    assert os.listdir(tmp_path) == ["haproxy.cfg"]


@pytest.mark.parametrize("existing_mode", [0o600, 0o640, 0o664])
def test_existing_file_is_replaced_and_keeps_its_mode(tmp_path, existing_mode):
    target = tmp_path / "haproxy.cfg"
    target.write_text("old\n")
    target.chmod(existing_mode)
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert mode(target) == existing_mode
    assert os.listdir(tmp_path) == ["haproxy.cfg"]


def test_failure_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "haproxy.cfg"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["haproxy.cfg"]


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "haproxy.cfg", "global\n")
