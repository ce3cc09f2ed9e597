from __future__ import annotations

import pytest

from discovery import acl, cli
from discovery.model import InvalidValue


def test_the_registrator_may_write_only_its_services_and_the_watcher_only_read():
    rules = acl.policies(["webapp", "api", "webapp"])
    assert rules["discovery-registrator"] == {"service": {"api": {"policy": "write"}, "webapp": {"policy": "write"}}}
    watcher = rules["discovery-watcher"]
    assert {kind: {k: v["policy"] for k, v in entry.items()} for kind, entry in watcher.items()} == {
        "service_prefix": {"": "read"}, "node_prefix": {"": "read"}}


@pytest.mark.parametrize("name", ["", "web app", 'x" { policy = "write" } service_prefix "', "*", "a\n"])
def test_a_service_name_outside_the_grammar_never_reaches_a_policy(name):
    with pytest.raises(InvalidValue):
        acl.policies([name])


def test_no_service_at_all_is_refused():
    with pytest.raises(InvalidValue):
        acl.policies([])


def test_secrets_are_written_with_their_mode_from_the_start(tmp_path):
    path = tmp_path / "dir" / "token"
    acl.write_secret(path, "s3cret\n", 0o400)
    assert path.stat().st_mode & 0o777 == 0o400
    assert acl.read_secret(path) == "s3cret"
    acl.write_secret(path, "other\n", 0o444)  # replaced atomically, even over a read-only file
    assert acl.read_secret(path) == "other"
    assert acl.read_secret(tmp_path / "missing") is None


def test_a_damaged_gossip_file_is_an_error_not_a_new_key(tmp_path):
    out = tmp_path / "gossip.json"
    out.write_text("{}")
    with pytest.raises(KeyError):
        acl.keygen(out)


@pytest.mark.parametrize("text", ["watcher", "nobody=/x", "watcher=", "=/x"])
def test_token_dirs_name_a_known_component(text):
    with pytest.raises(ValueError):
        acl.token_dir(text)


def test_command_line_reads_components_and_services():
    args = acl.parse_args(
        ["bootstrap", "--admin-dir", "/a", "--token-dir", "watcher=/w", "--services", "webapp, api"], {})
    assert dict(args.tokens) == {"watcher": acl.Path("/w")}
    assert args.services == ("webapp", "api")


def test_token_file_is_read_and_checked(tmp_path):
    path = tmp_path / "token"
    path.write_text("0b8f-secret\n")
    assert cli.consul_token(None, str(path)) == "0b8f-secret"
    assert cli.consul_token("abc", None) == "abc"
    assert cli.consul_token(None, None) is None
    with pytest.raises(ValueError, match="not both"):
        cli.consul_token("abc", str(path))
    with pytest.raises(ValueError, match="No such file"):
        cli.consul_token(None, str(tmp_path / "missing"))
    path.write_text("two words\n")
    with pytest.raises(ValueError, match="one token"):
        cli.consul_token(None, str(path))
