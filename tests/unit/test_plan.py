from discovery.model import DesiredState, Instance, Route, Service
from discovery.plan import diff

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
