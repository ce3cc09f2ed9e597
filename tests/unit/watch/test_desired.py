import logging

import pytest
from prometheus_client import REGISTRY

from discovery.model import CatalogEntry, Instance, Route
from discovery.watch.desired import (
    ROUTING_TAGS,
    RoutingPolicy,
    Unroutable,
    desired_state,
    parse_routes,
    routing_tags_help,
)
from discovery.watch.run import say_refusals


def entry(name, *tags, instances=()):
    return CatalogEntry(name, frozenset(tags), tuple(instances))


def test_only_opted_in_services_get_a_backend():
    state, _ = desired_state([entry("web", "lb"), entry("consul"), entry("db", "primary")], RoutingPolicy())
    assert [s.name for s in state.services] == ["web"]


def test_routes_and_default_from_tags():
    routes, is_default, refused = parse_routes(
        ["lb", "lb.default", "lb.host=Api.local", "lb.path=/v2", "lb.route=shop.local/cart", "lb.route=x.org",
         "other=1"],
        "lb",
    )
    assert is_default and not refused
    assert set(routes) == {
        Route(host="api.local"), Route(path="/v2"), Route(host="shop.local", path="/cart"), Route(host="x.org")
    }


def test_hostile_routing_tags_are_refused_with_a_reason():
    routes, _, refused = parse_routes(["lb.host=a b", "lb.path=/x\n bind :1", "lb.colour=red"], "lb")
    assert routes == ()
    assert len(refused) == 3 and any("colour" in r for r in refused)


def test_default_service_flag_wins_over_tags():
    catalog = [entry("a", "lb", "lb.default"), entry("b", "lb")]
    state, _ = desired_state(catalog, RoutingPolicy(default_service="b"))
    assert state.default is not None and state.default.name == "b"


def test_two_default_tags_keep_one_and_say_so():
    state, refusals = desired_state([entry("a", "lb", "lb.default"), entry("b", "lb", "lb.default")], RoutingPolicy())
    assert state.default is not None and state.default.name == "a"
    assert [(r.kind, r.counted) for r in refusals] == [("default", False)]
    assert str(refusals[0]) == "services a, b are all tagged lb.default: using a (set --default-service to choose)"


def test_service_with_no_passing_instance_keeps_its_empty_backend():
    state, _ = desired_state([entry("web", "lb")], RoutingPolicy())
    assert state.services[0].instances == ()


def test_custom_prefix():
    i = Instance("web", "w1", "10.0.0.1", 80)
    state, _ = desired_state([entry("web", "edge", "edge.default", instances=[i])], RoutingPolicy(tag_prefix="edge"))
    assert state.default is not None and state.default.instances == (i,)


def test_a_service_that_cannot_be_routed_does_not_hold_back_the_others():
    clash = (Instance("web", "a b", "10.0.0.1", 80), Instance("web", "a b", "10.0.0.2", 80))  # one server name
    state, refusals = desired_state([entry("web", "lb", instances=clash), entry("api", "lb")], RoutingPolicy())
    assert [s.name for s in state.services] == ["api"]
    assert [(r.kind, r.service, r.counted) for r in refusals] == [("service", "web", True)]
    assert str(refusals[0]).startswith("service 'web': not routed: ")


def test_refused_tags_come_back_to_the_caller_instead_of_being_logged(caplog):
    state, refusals = desired_state([entry("web", "lb", "lb.host=a b", "lb.colour=red")], RoutingPolicy())
    assert state.services[0].routes == ()
    assert sorted(r.kind for r in refusals) == ["tag", "tag"]
    assert all(str(r).startswith("service 'web': ignoring ") for r in refusals)
    assert not caplog.records  # pure: the watcher's run loop says them (run.say_refusals)


def test_routing_tags_table_drives_the_help():
    text = routing_tags_help("edge")
    assert [line.split()[0] for line in text.splitlines()] == [
        "edge", "edge.default", "edge.host=<host>", "edge.path=<prefix>", "edge.route=<host><prefix>"]
    assert len(ROUTING_TAGS) == len(text.splitlines())


def test_a_catalog_that_cannot_be_served_still_hands_back_what_it_refused():
    twice = [entry("web", "lb", "lb.colour=red"), entry("web", "lb")]  # one name, two entries
    with pytest.raises(Unroutable, match="appears twice") as raised:
        desired_state(twice, RoutingPolicy())
    assert [r.kind for r in raised.value.refusals] == ["tag"]


def test_the_watcher_says_each_refusal_once_and_counts_refused_values(caplog):
    def count(kind: str) -> float:
        return REGISTRY.get_sample_value("discovery_refused_values_total", {"kind": kind}) or 0.0

    before = {kind: count(kind) for kind in ("tag", "service", "default")}
    _, refusals = desired_state([entry("a", "lb", "lb.default", "lb.host=a b"), entry("b", "lb", "lb.default")],
                                RoutingPolicy())
    with caplog.at_level(logging.WARNING, logger="discovery.watch"):
        say_refusals(refusals)
    assert [r.getMessage() for r in caplog.records] == [str(r) for r in refusals]
    assert len(caplog.records) == 2
    assert count("tag") == before["tag"] + 1 and count("default") == before["default"]  # a choice is not counted
