import asyncio
import json
import random
import time

import aiohttp
import pytest
from consul.base import Response
from consul.exceptions import ACLPermissionDenied, ConsulException

from discovery.catalog import (
    NEW_SERVICE_GRACE,
    Catalog,
    QueryRules,
    follow_index,
    next_index,
    parse_instances,
    read_answer,
)
from discovery.model import CatalogEntry, Instance

FAST = QueryRules(wait=1.0, min_interval=0.001, backoff_base=0.001, backoff_max=0.001)


# --- next_index


@pytest.mark.parametrize(
    ("previous", "returned", "expected"),
    [
        (0, 0, 1),  # 0 would make every query return at once
        (0, 7, 7),
        (7, 7, 7),
        (7, 9, 9),
        (9, 7, 0),  # went backwards: start over
        (9, 0, 0),  # went backwards to 0: start over (the next answer is then checked again)
    ],
)
def test_next_index_follows_consuls_rules(previous, returned, expected):
    assert next_index(previous, returned) == expected


# --- QueryRules


@pytest.mark.parametrize(
    ("failures", "ceiling"),
    [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (6, 5.0), (10_000, 5.0)],
)
@pytest.mark.parametrize(("pick", "share"), [(lambda low, high: low, 0.5), (lambda low, high: high, 1.0)])
def test_backoff_jitter_spans_half_the_ceiling_to_the_ceiling(monkeypatch, failures, ceiling, pick, share):
    monkeypatch.setattr(random, "uniform", pick)
    rules = QueryRules(backoff_base=0.2, backoff_max=5.0)
    assert rules.backoff(failures) == pytest.approx(ceiling * share)


@pytest.mark.parametrize("failures", [1, 4, 30])
def test_backoff_stays_within_bounds_with_real_jitter(failures):
    rules = QueryRules(backoff_base=0.2, backoff_max=5.0)
    ceiling = min(5.0, 0.2 * 2 ** (failures - 1))
    delays = [rules.backoff(failures) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered, so that watchers do not retry in step


@pytest.mark.parametrize("wait", [1.0, 55.0, 600.0])
def test_client_timeout_outlasts_consuls_longest_hold(wait):
    assert QueryRules(wait=wait).client_timeout > wait * 17 / 16


# --- follow_index


class ScriptedFetch:
    """Plays `(index, data)` answers and exceptions in order; records the index of each call."""

    def __init__(self, *script):
        self.script = list(script)
        self.indexes = []

    async def __call__(self, index):
        self.indexes.append(index)
        if not self.script:
            raise AssertionError(f"fetch called once more than scripted (index {index})")
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


async def take(fetch, count):
    stream = follow_index(fetch, "test", FAST)
    try:
        return [await anext(stream) for _ in range(count)]
    finally:
        await stream.aclose()


async def test_yields_only_when_the_data_changes():
    fetch = ScriptedFetch((3, "a"), (4, "a"), (5, "b"))
    assert await take(fetch, 2) == ["a", "b"]
    assert fetch.indexes == [0, 3, 4]


async def test_spurious_wake_up_with_the_same_index_is_not_yielded():
    fetch = ScriptedFetch((5, "a"), (5, "a"), (6, "b"))
    assert await take(fetch, 2) == ["a", "b"]
    assert fetch.indexes == [0, 5, 5]


async def test_index_going_backwards_starts_over_from_zero():
    fetch = ScriptedFetch((10, "a"), (4, "b"), (6, "c"))
    assert await take(fetch, 3) == ["a", "b", "c"]
    assert fetch.indexes == [0, 10, 0]


async def test_sends_one_when_consul_returns_index_zero():
    fetch = ScriptedFetch((0, "a"), (2, "b"))
    assert await take(fetch, 2) == ["a", "b"]
    assert fetch.indexes == [0, 1]


@pytest.mark.parametrize(
    "error",
    [aiohttp.ClientConnectionError("refused"), TimeoutError(), ConsulException("500 No cluster leader"),
     OSError("connection reset")],
    ids=lambda e: type(e).__name__,
)
async def test_transient_error_is_retried_and_the_data_kept(error):
    fetch = ScriptedFetch((3, "a"), error, error, (3, "a"), (4, "b"))
    # "a" is not yielded again after the outage: the last known state was kept.
    assert await take(fetch, 2) == ["a", "b"]
    assert fetch.indexes == [0, 3, 3, 3, 3]


async def test_an_index_stuck_at_zero_is_rate_limited_and_changes_still_get_through(monkeypatch):
    pauses = []

    async def sleep(seconds):
        pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    fetch = ScriptedFetch((7, "a"), (0, "a"), (0, "a"), (0, "a"), (0, "b"))
    assert await take(fetch, 2) == ["a", "b"]
    assert fetch.indexes == [0, 7, 0, 1, 0]
    assert pauses == [FAST.min_interval] * 3  # each answer that made no progress waits


async def test_unexpected_error_is_not_swallowed():
    fetch = ScriptedFetch((3, "a"), KeyError("bug"))
    stream = follow_index(fetch, "test", FAST)
    assert await anext(stream) == "a"
    with pytest.raises(KeyError):
        await anext(stream)


# --- parse_instances


def health_entry(service_id, service_address, port=8080, node_address="10.0.0.5"):
    """One element of /v1/health/service/<name>, as Consul returns it."""
    return {
        "Node": {"ID": "4e1c", "Node": "node-1", "Address": node_address, "Datacenter": "dc1"},
        "Service": {"ID": service_id, "Service": "web", "Tags": ["lb"], "Address": service_address,
                    "Port": port, "Meta": {}},
        "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
    }


def test_service_address_is_used_when_set():
    instances, refused = parse_instances("web", [health_entry("web-1", "172.18.0.4")])
    assert instances == (Instance("web", "web-1", "172.18.0.4", 8080),) and refused == []


def test_empty_service_address_falls_back_to_the_node_address():
    instances, refused = parse_instances("web", [health_entry("web-1", "")])
    assert instances == (Instance("web", "web-1", "10.0.0.5", 8080),) and refused == []


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (health_entry("evil", "10.0.0.1\n bind :1"), "address"),
        (health_entry("zero", "10.0.0.2", port=0), "port"),
        (health_entry("nowhere", "", node_address=""), "address"),
    ],
)
def test_unusable_entries_are_refused_with_a_reason_and_the_rest_kept(bad, words):
    good = health_entry("web-1", "172.18.0.4")
    instances, refused = parse_instances("web", [good, bad])
    assert [i.id for i in instances] == ["web-1"]
    assert len(refused) == 1
    assert bad["Service"]["ID"] in refused[0] and words in refused[0]


@pytest.mark.parametrize("entries", [[], None])
def test_no_entries_means_no_instances(entries):
    assert parse_instances("web", entries) == ((), [])


# --- Catalog._publish


def catalog_and_log():
    published = []
    catalog = Catalog(client=None, opted_in=lambda tags: "lb" in tags,
                      publish=lambda snapshot, reason: published.append((snapshot, reason)))
    return catalog, published


WEB1 = Instance("web", "web-1", "10.0.0.1", 80)
API1 = Instance("api", "api-1", "10.0.0.2", 80)


def test_nothing_is_published_until_every_opted_in_service_has_answered():
    catalog, published = catalog_and_log()
    catalog._tags = {"web": frozenset({"lb"}), "api": frozenset({"lb", "lb.default"})}
    catalog._instances = {"web": (WEB1,)}
    catalog._publish("health of web changed")
    assert published == []

    catalog._instances["api"] = (API1,)
    catalog._publish("health of api changed")
    expected = (
        CatalogEntry("api", frozenset({"lb", "lb.default"}), (API1,)),
        CatalogEntry("web", frozenset({"lb"}), (WEB1,)),
    )
    assert published == [(expected, "health of api changed")]


def test_a_service_with_no_passing_instance_counts_as_answered():
    catalog, published = catalog_and_log()
    catalog._tags = {"web": frozenset({"lb"})}
    catalog._instances = {"web": ()}
    catalog._publish("catalog changed")
    assert published == [((CatalogEntry("web", frozenset({"lb"}), ()),), "catalog changed")]


def test_instances_of_a_service_no_longer_opted_in_are_not_published():
    catalog, published = catalog_and_log()
    catalog._tags = {"web": frozenset({"lb"})}
    catalog._instances = {"web": (WEB1,), "api": (API1,)}
    catalog._publish("catalog changed")
    assert [entry.name for entry in published[0][0]] == ["web"]


def test_a_catalog_with_no_opted_in_service_publishes_an_empty_snapshot():
    catalog, published = catalog_and_log()
    catalog._tags = {}
    catalog._publish("catalog changed")
    assert published == [((), "catalog changed")]


def test_the_same_service_id_on_two_nodes_gives_two_distinct_servers():
    entries = [
        {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": "web-1", "Port": 80}},
        {"Node": {"Node": "n2", "Address": "10.0.0.2"}, "Service": {"ID": "web-1", "Port": 80}},
    ]
    instances, refused = parse_instances("web", entries)
    assert not refused
    assert len({i.server_name for i in instances}) == 2


class ScriptedHTTP:
    """Stands in for `client.http`: answers reads from a script of (index, body, last contact ms),
    then blocks like a query that never returns; records each query's parameters."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.queries = []

    async def get(self, callback, path, params=None, headers=None):
        self.queries.append((path, dict(params or [])))
        if not self.answers:
            await asyncio.Event().wait()
        index, body, contact = self.answers.pop(0)
        return callback(Response(200, {"X-Consul-Index": str(index), "X-Consul-LastContact": str(contact),
                                       "X-Consul-KnownLeader": "true"}, json.dumps(body)))


def scripted_client(*answers):
    http = ScriptedHTTP(answers)
    return type("Client", (), {"http": http, "prepare_headers": lambda self, token=None: {}})(), http


async def settle(task):
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()


async def test_an_answer_that_changes_only_raft_indexes_is_not_published():
    first = health_entry("web-1", "10.0.0.1") | {"ModifyIndex": 10}
    resynced = health_entry("web-1", "10.0.0.1") | {"ModifyIndex": 11}  # anti-entropy, same instance
    moved = health_entry("web-1", "10.0.0.9")
    catalog, published = catalog_and_log()
    catalog.client, _ = scripted_client((1, [first], 0), (2, [resynced], 0), (3, [moved], 0))
    catalog.rules = QueryRules(min_interval=0)
    catalog._tags = {"web": frozenset({"lb"})}
    await settle(asyncio.create_task(catalog._follow_service("web")))
    assert [snapshot[0].instances[0].address for snapshot, _ in published] == ["10.0.0.1", "10.0.0.9"]


async def test_reads_are_stale_while_fresh_enough_and_go_to_the_leader_when_not():
    catalog, _ = catalog_and_log()
    entry = [health_entry("web-1", "10.0.0.1")]
    catalog.client, http = scripted_client((5, entry, 200), (6, entry, 12_000), (7, entry, 0))
    catalog.rules = QueryRules(min_interval=0, max_stale=10.0)
    catalog._tags = {"web": frozenset({"lb"})}
    await settle(asyncio.create_task(catalog._follow_service("web")))
    stale = ["stale" in params for _, params in http.queries]
    assert stale == [True, True, False, True]  # 12 s since the leader was heard: asked again without ?stale
    assert http.queries[2][1]["index"] == "5" and http.queries[3][1]["index"] == "7"
    assert all(params["passing"] == "1" and path == "/v1/health/service/web" for path, params in http.queries)


async def test_max_stale_zero_reads_from_the_leader_only():
    catalog, _ = catalog_and_log()
    catalog.client, http = scripted_client((5, {"web": ["lb"]}, 0))
    catalog.rules = QueryRules(max_stale=0)
    assert await catalog._fetch_services(0) == (5, {"web": ["lb"]})
    assert http.queries == [("/v1/catalog/services", {"wait": "55s"})]


@pytest.mark.parametrize(("code", "headers", "body"), [
    (500, {"X-Consul-Index": "1"}, "No cluster leader"),
    (200, {}, "[]"),
    (200, {"X-Consul-Index": "1"}, "{not json"),
])
def test_an_error_or_unreadable_answer_is_a_consul_exception(code, headers, body):
    with pytest.raises(ConsulException):
        read_answer(Response(code, headers, body))


@pytest.mark.parametrize("headers", [{"X-Consul-Index": "9", "X-Consul-LastContact": "soon"}])
def test_a_malformed_freshness_header_is_a_consul_exception_not_a_crash(headers):
    with pytest.raises(ConsulException, match="unreadable"):
        read_answer(Response(200, headers, "[]"))


def test_a_refused_token_is_told_apart_from_an_outage():
    with pytest.raises(ACLPermissionDenied, match="token"):
        read_answer(Response(403, {}, "ACL not found"))


def test_an_answer_carries_its_freshness():
    answer = read_answer(Response(200, {"X-Consul-Index": "9", "X-Consul-LastContact": "1500",
                                        "X-Consul-KnownLeader": "false"}, "[]"))
    assert (answer.index, answer.data, answer.last_contact, answer.known_leader) == (9, [], 1.5, False)


def test_a_new_service_silent_past_the_grace_period_no_longer_holds_the_others_back():
    catalog, published = catalog_and_log()
    catalog._tags = {"web": frozenset({"lb"}), "api": frozenset({"lb"})}
    catalog._instances = {"web": (WEB1,)}
    catalog._asked = {"web": time.monotonic(), "api": time.monotonic()}
    catalog._publish("health of web changed")
    assert published == []  # api was asked a moment ago: wait for it
    catalog._asked["api"] -= NEW_SERVICE_GRACE + 1
    catalog._publish("health of web changed")
    assert published[-1][0] == (CatalogEntry("web", frozenset({"lb"}), (WEB1,)),)  # api left out, not empty


def test_a_service_name_we_could_not_route_is_refused_once_and_never_queried():
    catalog, _ = catalog_and_log()
    assert not catalog._valid("web\n1999-01-01 INFO forged")
    assert not catalog._valid("../x")
    assert catalog._valid("web")
    assert len(catalog._refused_names) == 2


def test_instances_of_a_name_that_differs_only_in_case_are_not_taken():
    other = health_entry("Web-1", "172.18.0.9")
    other["Service"]["Service"] = "Web"  # Consul answers /health/service/web with these too
    instances, refused = parse_instances("web", [health_entry("web-1", "172.18.0.4"), other])
    assert [i.id for i in instances] == ["web-1"]
    assert len(refused) == 1 and "registered as 'Web'" in refused[0]
