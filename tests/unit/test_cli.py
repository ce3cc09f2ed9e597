import os

import pytest

from discovery.cli import EXIT_USAGE, EnvParser, positive_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1.5", 1.5), (" 2S ", 2.0), ("0", 0.0), ("1.5m", 90.0)],
)
def test_positive_seconds_reads_plain_numbers_and_units(text, seconds):
    assert positive_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1", "-5ms", "inf", "infs", "nan", "1e400", "abc", "", "ms", "1h", "2 s s"])
def test_positive_seconds_refuses_negative_infinite_and_garbage(text):
    with pytest.raises(ValueError):
        positive_seconds(text)


@pytest.fixture
def env(monkeypatch):
    """Set (or, with None, unset) the test parser's variables."""

    def set_env(name, value):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)

    return set_env


def wait_parser(**kwargs):
    parser = EnvParser(environ=os.environ, prog="test")
    parser.option("--wait", env="TEST_WAIT", default=1.0, type=positive_seconds, help="how long", **kwargs)
    return parser


@pytest.mark.parametrize(
    ("value", "argv", "expected"),
    [
        (None, [], 1.0),
        ("", [], 1.0),
        ("250ms", [], 0.25),
        ("250ms", ["--wait", "2s"], 2.0),
    ],
    ids=["unset", "empty-is-unset", "env-gives-default", "flag-beats-env"],
)
def test_option_reads_its_default_from_the_environment(env, value, argv, expected):
    env("TEST_WAIT", value)
    assert wait_parser().parse_args(argv).wait == pytest.approx(expected)


def test_option_refuses_a_bad_environment_value_with_usage_exit(env, capsys):
    env("TEST_WAIT", "soon")
    with pytest.raises(SystemExit) as exit_info:
        wait_parser()
    assert exit_info.value.code == EXIT_USAGE
    assert "TEST_WAIT='soon'" in capsys.readouterr().err


def test_option_help_names_the_variable_and_the_effective_default(env, capsys):
    env("TEST_WAIT", "3s")
    with pytest.raises(SystemExit) as exit_info:
        wait_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "[env TEST_WAIT; default 3.0]" in " ".join(capsys.readouterr().out.split())


def test_option_refuses_an_environment_value_outside_its_choices(env):
    env("TEST_LEVEL", "verbose")
    parser = EnvParser(environ=os.environ, prog="test")
    with pytest.raises(SystemExit) as exit_info:
        parser.option("--level", env="TEST_LEVEL", default="info", choices=["info", "debug"], help="level")
        parser.parse_args([])
    assert exit_info.value.code == EXIT_USAGE


def test_help_survives_a_percent_sign_in_an_environment_value(env, capsys):
    env("TEST_PATH", "/srv/100%/haproxy.cfg")
    parser = EnvParser(environ=os.environ, prog="test")
    parser.option("--path", env="TEST_PATH", default="x", help="a path")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "/srv/100%/haproxy.cfg" in capsys.readouterr().out


def switch_parser():
    parser = EnvParser(environ=os.environ, prog="test")
    parser.switch("--manage", env="TEST_MANAGE", help="manage it")
    return parser


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("0", False), ("false", False), ("no", False),
     ("1", True), ("true", True), ("TRUE", True), (" yes ", True)],
)
def test_switch_reads_its_default_from_the_environment(env, value, expected):
    env("TEST_MANAGE", value)
    assert switch_parser().parse_args([]).manage is expected


def test_switch_flag_turns_it_on_whatever_the_environment(env):
    env("TEST_MANAGE", "false")
    assert switch_parser().parse_args(["--manage"]).manage is True


@pytest.mark.parametrize("value", ["maybe", "2", "on"])
def test_switch_refuses_a_bad_environment_value_with_usage_exit(env, value):
    env("TEST_MANAGE", value)
    with pytest.raises(SystemExit) as exit_info:
        switch_parser()
    assert exit_info.value.code == EXIT_USAGE
