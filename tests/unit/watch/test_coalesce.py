import time

import pytest

from discovery.model import CatalogEntry
from discovery.watch.coalesce import Mailbox, apply_at


@pytest.mark.parametrize(
    ("first", "last", "applied", "expected"),
    [
        (10.0, 10.0, None, 10.0),  # nothing applied yet: at once
        (10.0, 10.0, 9.0, 10.0),  # leading edge: quiet for longer than wait_min
        (10.0, 10.0, 9.75, 10.0),  # quiet for exactly wait_min
        (10.0, 10.5, 9.875, 10.75),  # within wait_min of an apply: wait until quiet for wait_min
        (10.0, 11.875, 9.875, 12.0),  # quiet period would end after first + wait_max: capped
        (10.0, 13.0, 9.875, 12.0),  # still changing long after: capped
    ],
)
def test_apply_at(first, last, applied, expected):
    assert apply_at(first, last, applied, wait_min=0.25, wait_max=2.0) == expected


def snapshot(*names):
    return tuple(CatalogEntry(name, frozenset({"lb"})) for name in names)


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic, moved by hand."""
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_take_returns_the_newest_snapshot_and_every_reason_once():
    mailbox = Mailbox()
    mailbox.put(snapshot("a"), "catalog changed")
    mailbox.put(snapshot("a", "b"), "health of b changed")
    mailbox.put(snapshot("b"), "catalog changed")
    assert mailbox.take() == (snapshot("b"), ["catalog changed", "health of b changed"])
    assert mailbox.reasons == []


def test_put_without_a_snapshot_keeps_the_previous_one():
    mailbox = Mailbox()
    mailbox.put(snapshot("a"), "catalog changed")
    mailbox.take()
    mailbox.put(None, "template changed")
    assert mailbox.take() == (snapshot("a"), ["template changed"])


def test_take_before_any_snapshot_gives_none():
    mailbox = Mailbox()
    mailbox.put(None, "retry after failure")
    assert mailbox.take() == (None, ["retry after failure"])


def test_changed_is_set_by_put_and_cleared_by_take_while_arrived_stays_for_the_waiter():
    mailbox = Mailbox()
    assert not mailbox.changed.is_set() and not mailbox.arrived.is_set()
    mailbox.put(snapshot("a"), "catalog changed")
    assert mailbox.changed.is_set() and mailbox.arrived.is_set()
    mailbox.take()
    assert not mailbox.changed.is_set()
    assert mailbox.arrived.is_set()  # only the apply loop clears it


def test_first_and_last_span_a_burst_and_a_new_burst_starts_after_take(clock):
    mailbox = Mailbox()
    mailbox.put(snapshot("a"), "one")
    clock[0] = 100.5
    mailbox.put(snapshot("b"), "two")
    assert (mailbox.first, mailbox.last) == (100.0, 100.5)
    mailbox.take()
    clock[0] = 107.0
    mailbox.put(snapshot("c"), "three")
    assert (mailbox.first, mailbox.last) == (107.0, 107.0)
