import pytest

from discovery.model import DesiredState, Instance, Route, Service
from discovery.watch.plan import Membership, diff, membership, with_draining

A1 = Instance("a", "a1", "10.0.0.1", 80)
A2 = Instance("a", "a2", "10.0.0.2", 80)


def state(*services):
    return DesiredState(tuple(services))


def test_first_state_adds_everything():
    change = diff(None, state(Service("a", (A1,))))
    assert change.added_services == ("a",) and change.added_instances == (A1,)
    assert change.structural


def test_membership_change_is_not_structural():
    change = diff(state(Service("a", (A1,))), state(Service("a", (A2,))))
    assert change.added_instances == (A2,) and change.removed_instances == (A1,)
    assert not change.structural and not change.empty
    assert change.summary() == "+a2 10.0.0.2:80 (a), -a1 10.0.0.1:80 (a)"


def test_route_or_default_change_is_structural():
    before = state(Service("a", (A1,)))
    assert diff(before, state(Service("a", (A1,), (Route(path="/x"),)))).rerouted_services == ("a",)
    assert diff(before, state(Service("a", (A1,), is_default=True))).structural


def test_equal_states_make_no_change():
    s = state(Service("a", (A1, A2)))
    assert diff(s, state(Service("a", (A2, A1)))).empty
    assert diff(s, s).summary() == "no change"


def test_removed_service_removes_its_instances():
    change = diff(state(Service("a", (A1,))), state())
    assert change.removed_services == ("a",) and change.removed_instances == (A1,)


def test_membership_adds_and_drains_without_reload():
    steps = membership(diff(state(Service("a", (A1,))), state(Service("a", (A2,)))), draining=[])
    assert steps == Membership(add=(A2,), drain=(A1,), undrain=())


def test_an_instance_back_while_draining_is_undrained_not_added():
    steps = membership(diff(state(Service("a", ())), state(Service("a", (A1,)))), draining=[A1])
    assert steps == Membership(add=(), drain=(), undrain=(A1,))


@pytest.mark.parametrize(
    "before, after, draining",
    [
        (state(Service("a", (A1,))), state(Service("a", (A1,)), Service("b")), []),  # new backend
        (state(Service("a", (A1,))), state(Service("a", (A1,), is_default=True)), []),  # routing
        (state(Service("a", (A1,))), state(Service("a", (Instance("a", "a1", "10.0.0.9", 80),))), []),  # readdress
        (state(Service("a", ())), state(Service("a", (A1,))), [Instance("a", "a1", "10.0.0.9", 80)]),
    ],
)
def test_changes_only_a_reload_can_apply(before, after, draining):
    assert membership(diff(before, after), draining) is None


def test_with_draining_lists_draining_servers_beside_serving_ones():
    merged = with_draining(state(Service("a", (A1,)), Service("b")), [A2, A1, Instance("gone", "g", "10.0.0.7", 80)])
    assert merged.service("a").draining == (A2,)  # A1 serves again: not listed twice
    assert merged.service("b").draining == ()
    assert merged.service("gone") is None
