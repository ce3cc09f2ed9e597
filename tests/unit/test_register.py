import asyncio
import dataclasses
import os

import aiohttp
import pytest

from discovery.model import OWNER_META, OWNER_VALUE, ConsulAddress, HttpCheck, Registration
from discovery.register import Registrator, RegistratorConfig, SyncPlan, label_filter, owned, parse_args, sync_plan

CONTAINER = "4f66ad9a0b2e" + "7" * 52
DEFAULT_CHECK = HttpCheck()


def reg(name="web", address="172.18.0.5", port=8080, tags=("lb",), check=DEFAULT_CHECK, container=CONTAINER):
    return Registration(id=f"{name}-{container[:12]}", name=name, address=address, port=port, tags=tags,
                        check=check, container=container, owner="host-a")


def agent_service(r):
    """What /v1/agent/services says of a registration we made."""
    return {
        "ID": r.id, "Service": r.name, "Tags": list(reversed(r.tags)), "Meta": dict(r.meta), "Port": r.port,
        "Address": r.address, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
        "Datacenter": "dc1",
    }


# --- owned


def test_owned_keeps_only_registrations_of_this_registrator():
    mine = agent_service(reg())
    services = {
        "web-mine": mine,
        "web-other-host": {**mine, "Meta": {OWNER_META: OWNER_VALUE, "registrator": "host-b"}},
        "web-other-tool": {**mine, "Meta": {OWNER_META: "registrator", "registrator": "host-a"}},
        "web-no-owner": {**mine, "Meta": {"registrator": "host-a"}},
        "web-null-meta": {**mine, "Meta": None},
        "web-no-meta": {key: value for key, value in mine.items() if key != "Meta"},
        "consul": {"ID": "consul", "Service": "consul", "Port": 8300},
    }
    assert owned(services, "host-a") == {"web-mine": mine}


# --- sync_plan


def test_missing_registration_is_registered():
    wanted = reg()
    assert sync_plan([wanted], {}) == SyncPlan(register=(wanted,), deregister=())


def test_equal_registration_is_left_alone_whatever_the_tag_order():
    wanted = reg(tags=("lb", "lb.default", "lb.host=a.local"))
    plan = sync_plan([wanted], {wanted.id: agent_service(wanted)})
    assert plan.empty and plan == SyncPlan((), ())


@pytest.mark.parametrize(
    "change",
    [{"address": "172.18.0.9"}, {"port": 9090}, {"tags": ("lb", "lb.default")}, {"check": HttpCheck("/ready")},
     {"check": None}],
    ids=lambda change: next(iter(change)),
)
def test_changed_registration_is_registered_again(change):
    before = reg()
    after = dataclasses.replace(before, **change)
    assert sync_plan([after], {before.id: agent_service(before)}) == SyncPlan(register=(after,), deregister=())


def test_owned_but_unwanted_registrations_are_deregistered_in_order():
    kept, gone_b, gone_a = reg("web"), reg("zeta", container="b" * 64), reg("alpha", container="a" * 64)
    registered = {r.id: agent_service(r) for r in (kept, gone_b, gone_a)}
    assert sync_plan([kept], registered) == SyncPlan(register=(), deregister=(gone_a.id, gone_b.id))


def test_everything_registers_even_what_the_agent_already_lists():
    current = {reg().id: agent_service(reg())}
    assert sync_plan([reg()], current) == SyncPlan((), ())
    assert sync_plan([reg()], current, everything=True) == SyncPlan((reg(),), ())


def test_plan_registers_in_id_order_and_deregisters_at_once():
    web, api, old = reg("web"), reg("api"), reg("old")
    plan = sync_plan([web, api], {old.id: agent_service(old)})
    assert plan.register == (api, web) and plan.deregister == (old.id,)
    assert not plan.empty


# --- parse_args


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("DISCOVERY_", "CONSUL_")) or name == "DOCKER_HOST":
            monkeypatch.delenv(name)


def test_defaults():
    config, level = parse_args([])
    assert config.consul == ConsulAddress("http", "127.0.0.1", 8500)
    assert (config.token, config.docker_url, config.owner, config.network) == (None, None, None, None)
    assert (config.resync, config.deregister_after, level) == (30.0, "1m", "info")


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("DISCOVERY_RESYNC", "45s")
    monkeypatch.setenv("DISCOVERY_DOCKER", "tcp://docker:2375")
    monkeypatch.setenv("DISCOVERY_NETWORK", "from-env")
    config, _ = parse_args(["--id", "host-a", "--network", "app", "--deregister-after", "90s"])
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
        parse_args(argv)
    assert exit_info.value.code == 2


def test_bad_resync_in_environment_exits_with_usage_error(monkeypatch):
    monkeypatch.setenv("DISCOVERY_RESYNC", "often")
    with pytest.raises(SystemExit) as exit_info:
        parse_args([])
    assert exit_info.value.code == 2


def test_help_lists_labels_their_env_fallbacks_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
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
    config, _ = parse_args([])
    assert config.only_label == "com.docker.compose.project=lab"


# --- follow_consul


class ScriptedCatalog:
    """Stands in for `client.catalog`: answers from a script, then blocks."""

    def __init__(self, *script):
        self.script = list(script)

    async def services(self, index=None, wait=None):
        if not self.script:
            await asyncio.Event().wait()
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return str(step), {}


async def resyncs_after(*script):
    client = type("Client", (), {"catalog": ScriptedCatalog(*script)})()
    registrator = Registrator(RegistratorConfig(backoff_max=0.001), containers=None, client=client, owner="o")
    seen = []
    task = asyncio.create_task(registrator.follow_consul())
    for _ in range(len(script)):
        for _ in range(20):
            await asyncio.sleep(0.002)
        seen.append(registrator.resync_now.is_set())
        registrator.resync_now.clear()
    task.cancel()
    return seen


async def test_consul_answering_again_or_going_back_in_time_asks_for_a_reconcile():
    assert await resyncs_after(5, 6) == [False, False]
    down = aiohttp.ClientConnectionError("refused")
    assert any(await resyncs_after(5, down, 5))  # restarted: our registrations may be gone
    assert any(await resyncs_after(50, 3))  # snapshot restore or wiped data: the index went backwards
