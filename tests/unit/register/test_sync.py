import dataclasses

import pytest

from discovery.model import OWNER_META, OWNER_VALUE, HttpCheck, Registration
from discovery.register.sync import SyncPlan, owned, sync_plan

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
