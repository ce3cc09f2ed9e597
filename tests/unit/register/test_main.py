import os

import pytest

from discovery.model import ConsulAddress
from discovery.register.main import label_filter, parse_args


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("DISCOVERY_", "CONSUL_")) or name == "DOCKER_HOST":
            monkeypatch.delenv(name)


def test_defaults():
    config, level = parse_args([], os.environ)
    assert config.consul == ConsulAddress("http", "127.0.0.1", 8500)
    assert (config.token, config.docker_url, config.owner, config.network) == (None, None, None, None)
    assert (config.resync, config.deregister_after, level) == (30.0, "1m", "info")


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("DISCOVERY_RESYNC", "45s")
    monkeypatch.setenv("DISCOVERY_DOCKER", "tcp://docker:2375")
    monkeypatch.setenv("DISCOVERY_NETWORK", "from-env")
    config, _ = parse_args(["--id", "host-a", "--network", "app", "--deregister-after", "90s"], os.environ)
    assert config.resync == 45.0 and config.docker_url == "tcp://docker:2375"
    assert (config.owner, config.network, config.deregister_after) == ("host-a", "app", "90s")


@pytest.mark.parametrize(
    "argv",
    [["--deregister-after", "soon"], ["--deregister-after", "-1m"], ["--deregister-after", "60"],
     ["--deregister-after", "30s"], ["--resync", "500ms"], ["--resync", "x"],
     ["--consul", "ftp://consul"], ["--log-level", "loud"]],
    ids=lambda argv: " ".join(argv),
)
def test_bad_flags_exit_with_usage_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, os.environ)
    assert exit_info.value.code == 2


def test_bad_resync_in_environment_exits_with_usage_error(monkeypatch):
    monkeypatch.setenv("DISCOVERY_RESYNC", "often")
    with pytest.raises(SystemExit) as exit_info:
        parse_args([], os.environ)
    assert exit_info.value.code == 2


def test_help_lists_labels_their_env_fallbacks_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"], os.environ)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    words = [
        "discovery.service", "SERVICE_NAME", "discovery.port", "SERVICE_PORT", "discovery.tags", "SERVICE_TAGS",
        "discovery.check.http", "SERVICE_CHECK_HTTP", "discovery.check.interval", "discovery.check.timeout",
        "discovery.network", "discovery.ignore", "SERVICE_IGNORE",
        "--consul", "--token", "--docker", "--id", "--network", "--resync", "--deregister-after", "--log-level",
    ]
    assert [word for word in words if word not in text] == []
    codes = text.split("exit codes:")[1].splitlines()
    assert [line.split()[0] for line in codes if line.startswith("  ")] == ["0", "1", "2"]


@pytest.mark.parametrize("text", ["", "=x", "a b", "project=x\ny"])
def test_a_label_filter_is_one_key_or_key_value_word(text):
    with pytest.raises(ValueError):
        label_filter(text)


def test_only_label_reaches_the_config(monkeypatch):
    monkeypatch.setenv("DISCOVERY_ONLY_LABEL", "com.docker.compose.project=lab")
    config, _ = parse_args([], os.environ)
    assert config.only_label == "com.docker.compose.project=lab"
