import os

import pytest

from discovery.files import write_atomic


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
