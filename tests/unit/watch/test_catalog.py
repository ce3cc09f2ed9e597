import asyncio
import json
import time

import pytest
from consul.base import Response

from discovery.consul_api import QueryRules
from discovery.model import CatalogEntry, Instance
from discovery.watch.catalog import NEW_SERVICE_GRACE, Catalog, parse_instances

FAST = QueryRules(wait=1.0, min_interval=0.001, backoff_base=0.001, backoff_max=0.001)


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


def test_an_unchanged_entry_reuses_the_instance_it_made_and_a_changed_one_is_validated_again():
    known: dict = {}
    first, _ = parse_instances("web", [health_entry("web-1", "172.18.0.4"), health_entry("web-2", "172.18.0.5")], known)
    again, _ = parse_instances("web", [health_entry("web-1", "172.18.0.4"), health_entry("web-2", "bad address")],
                               known)
    assert again[0] is first[0]  # not built (nor validated) again
    assert [i.id for i in again] == ["web-1"]  # the changed one was checked, and refused
    assert len(known) == 1  # only what the last answer listed is kept


def test_values_that_cannot_be_a_key_are_still_refused_one_by_one():
    entry = health_entry("web-1", "172.18.0.4")
    entry["Service"]["Port"] = [80]
    instances, refused = parse_instances("web", [entry], {})
    assert instances == () and len(refused) == 1
