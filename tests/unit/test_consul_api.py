import asyncio
import random

import aiohttp
import pytest
from consul.base import Response
from consul.exceptions import ACLPermissionDenied, ConsulException

from discovery.consul_api import QueryRules, follow_index, next_index, read_answer

FAST = QueryRules(wait=1.0, min_interval=0.001, backoff_base=0.001, backoff_max=0.001)


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
