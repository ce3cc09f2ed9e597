import os

import pytest

from discovery.consul_api import QueryRules
from discovery.haproxy.config import DEFAULT_TEMPLATE
from discovery.model import ConsulAddress
from discovery.watch.config import save_new_stats_password, stats_password
from discovery.watch.desired import RoutingPolicy
from discovery.watch.main import parse_args
from discovery.watch.run import EXIT_INVALID_CONFIG, EXIT_NO_CONSUL


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("DISCOVERY_", "CONSUL_")):
            monkeypatch.delenv(name)


@pytest.fixture
def parse(tmp_path):
    """parse_args with --output in a writable directory."""
    return lambda *argv: parse_args([*argv, "--output", str(tmp_path / "haproxy.cfg")], os.environ)


def test_defaults(parse, tmp_path):
    config, level = parse()
    assert config.consul == ConsulAddress("http", "127.0.0.1", 8500)
    assert config.token is None
    assert config.policy == RoutingPolicy("lb", None)
    assert config.apply.template == DEFAULT_TEMPLATE
    assert config.apply.output == tmp_path / "haproxy.cfg"
    assert config.apply.render.server_state_file == str(tmp_path / "haproxy.state")
    assert (config.apply.drain_timeout, config.apply.max_reloads_per_minute) == (30.0, 30)
    assert not config.apply.render.sticky
    assert (config.wait_min, config.wait_max, config.once_timeout) == (0.2, 2.0, 30.0)
    assert config.rules == QueryRules(wait=55.0, max_stale=10.0)
    assert (config.max_shrink, config.shrink_hold) == (0.5, 15.0)  # ADR 0007
    assert not (config.manage_haproxy or config.once or config.dry_run)
    assert level == "info"


def test_environment_variables_set_the_defaults(parse, monkeypatch):
    for name, value in {
        "DISCOVERY_WAIT_MIN": "250ms", "DISCOVERY_WAIT_MAX": "3s", "DISCOVERY_CONSUL_WAIT": "1m",
        "CONSUL_HTTP_ADDR": "https://consul.local:8501", "DISCOVERY_TAG_PREFIX": "edge",
        "DISCOVERY_MANAGE_HAPROXY": "true", "DISCOVERY_LOG_LEVEL": "debug",
    }.items():
        monkeypatch.setenv(name, value)
    config, level = parse()
    assert (config.wait_min, config.wait_max, config.rules.wait) == (0.25, 3.0, 60.0)
    assert config.consul == ConsulAddress("https", "consul.local", 8501)
    assert config.policy.tag_prefix == "edge" and config.manage_haproxy and level == "debug"


def test_guard_rails_can_be_tuned_or_turned_off(parse, monkeypatch):
    monkeypatch.setenv("DISCOVERY_MAX_SHRINK", "100")
    config, _ = parse("--shrink-hold", "1m", "--max-stale", "0")
    assert (config.max_shrink, config.shrink_hold, config.rules.max_stale) == (1.0, 60.0, 0.0)
    with pytest.raises(SystemExit):
        parse("--max-shrink", "150")


def test_flags_beat_environment_variables(parse, monkeypatch):
    monkeypatch.setenv("DISCOVERY_WAIT_MIN", "250ms")
    config, _ = parse("--wait-min", "100ms", "--default-service", "web", "--once")
    assert config.wait_min == 0.1 and config.policy.default_service == "web" and config.once


@pytest.mark.parametrize(
    "argv",
    [
        ["--wait-min", "3s", "--wait-max", "1s"],
        ["--wait-min", "soon"],
        ["--consul", "ftp://consul:8500"],
        ["--consul", "http://consul host:8500"],
        ["--consul", "consul:99999"],
        ["--template", "/nonexistent/haproxy.cfg.j2"],
        ["--consul-wait", "500ms"],
        ["--consul-wait", "11m"],
        ["--tag-prefix", "l b"],
        ["--log-level", "verbose"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_bad_flags_exit_with_usage_error(parse, argv):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2


def test_bad_environment_variable_exits_with_usage_error(parse, monkeypatch):
    monkeypatch.setenv("DISCOVERY_WAIT_MAX", "forever")
    with pytest.raises(SystemExit) as exit_info:
        parse()
    assert exit_info.value.code == 2


def test_output_in_a_missing_directory_is_refused_unless_dry_run():
    output = "/nonexistent-discovery-dir/haproxy.cfg"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--output", output], os.environ)
    assert exit_info.value.code == 2
    config, _ = parse_args(["--output", output, "--dry-run"], os.environ)
    assert config.dry_run


def test_bad_log_level_in_environment_exits_with_usage_error(parse, monkeypatch):
    monkeypatch.setenv("DISCOVERY_LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit) as exit_info:
        parse()
    assert exit_info.value.code == 2


def help_text(capsys, parse_args_function):
    with pytest.raises(SystemExit) as exit_info:
        parse_args_function(["--help"], os.environ)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


WATCH_OPTIONS = [
    "--consul", "--token", "--tag-prefix", "--default-service", "--template", "--output", "--haproxy-bin",
    "--master-socket", "--runtime-socket", "--manage-haproxy", "--http-bind", "--stats-bind", "--haproxy-user",
    "--haproxy-group", "--wait-min", "--wait-max", "--consul-wait", "--once-timeout", "--log-level", "--once",
    "--dry-run",
]


def test_help_lists_every_option_and_exit_code(capsys):
    text = help_text(capsys, parse_args)
    missing = [option for option in WATCH_OPTIONS if f"  {option}" not in text]
    assert missing == []
    codes = text.split("exit codes:")[1].splitlines()
    assert [line.split()[0] for line in codes if line.strip()] == ["0", "1", "2", str(EXIT_INVALID_CONFIG),
                                                                 str(EXIT_NO_CONSUL)]


def test_help_does_not_print_the_acl_token(capsys, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "0b1f5c2e-secret-token")
    assert "secret-token" not in help_text(capsys, parse_args)


@pytest.mark.parametrize("value", [":80\n    lua-load /tmp/x.lua", "a b", "/run/a#b", '"x"'])
def test_values_written_into_the_config_must_be_one_word(parse, monkeypatch, value):
    monkeypatch.setenv("DISCOVERY_HTTP_BIND", value)
    with pytest.raises(SystemExit) as exit_:
        parse()
    assert exit_.value.code == 2


def test_a_stats_password_from_the_environment_wins_and_nothing_is_kept(tmp_path):
    assert stats_password({"DISCOVERY_STATS_PASSWORD": " s3cret "}, tmp_path / "pw") == ("s3cret", None)


def test_a_kept_stats_password_is_read_back(tmp_path):
    (tmp_path / "pw").write_text("kept\n")
    assert stats_password({}, tmp_path / "pw") == ("kept", None)
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ValueError, match="empty stats password"):
        stats_password({}, tmp_path / "pw")


def test_a_new_stats_password_is_made_at_parse_and_kept_owner_only_at_start(tmp_path):
    config, _ = parse_args(["--output", str(tmp_path / "haproxy.cfg")], {})
    keep = tmp_path / "stats-password"
    assert config.new_stats_password_file == keep and not keep.exists()  # parsing writes nothing
    save_new_stats_password(config)
    assert keep.read_text().strip() == config.apply.render.stats_password
    assert keep.stat().st_mode & 0o777 == 0o600


def test_dry_run_keeps_no_password(tmp_path):
    config, _ = parse_args(["--output", str(tmp_path / "haproxy.cfg"), "--dry-run"], {})
    assert config.new_stats_password_file is None and config.apply.render.stats_password


def test_a_password_file_that_cannot_be_kept_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--output", str(tmp_path / "haproxy.cfg"), "--stats-password-file",
                    str(tmp_path / "missing" / "pw")], {})
    assert exit_info.value.code == 2
    assert "--stats-password-file" in capsys.readouterr().err
