import pytest

from discovery.model import DesiredState, Instance, Route, Service
from discovery.watch.guard import ShrinkGuard


def web(*numbers, default=True, routes=()):
    return Service("web", tuple(Instance("web", f"web-{n}", f"10.0.0.{n}", 80) for n in numbers), routes, default)


def state(*services):
    return DesiredState(tuple(services))


def test_the_first_state_and_small_shrinks_pass_untouched():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    assert guard.check(None, state(), 0).state == state()
    verdict = guard.check(state(web(1, 2)), state(web(2)), 0)  # 50 % is not more than 50 %
    assert verdict.state == state(web(2)) and not verdict.held and verdict.recheck_in is None


def test_a_large_shrink_keeps_the_served_instances_until_it_lasted_hold_seconds():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    served = state(web(1, 2, 3))
    verdict = guard.check(served, state(web(1)), now=100)
    assert verdict.state == served and verdict.recheck_in == 15
    assert [str(hold) for hold in verdict.held] == ["web: 3 → 1 instances, held 15.0 s more"]
    assert guard.check(served, state(web(1)), now=110).recheck_in == 5  # counted from the first sight
    late = guard.check(served, state(web(1)), now=115)
    assert late.state == state(web(1)) and late.confirmed == ("web",) and not late.held
    assert guard.since == {}


def test_a_service_gone_from_consul_keeps_its_backend_and_routes_while_held():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    served = state(web(1, 2, routes=(Route(host="a.local"),)))
    assert guard.check(served, state(), now=0).state == served


def test_instances_back_in_consul_end_the_hold_and_a_new_shrink_starts_a_new_one():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    served = state(web(1, 2))
    guard.check(served, state(), now=0)
    assert guard.check(served, served, now=5).state == served and guard.since == {}
    assert guard.check(served, state(), now=14).recheck_in == 15


def test_new_instances_are_added_at_once_while_the_old_ones_are_held():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    verdict = guard.check(state(web(1, 2, 3, 4)), state(web(5)), now=0)
    assert verdict.state == state(web(1, 2, 3, 4, 5))


def test_instances_replaced_one_for_one_are_no_shrink():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    assert guard.check(state(web(1, 2)), state(web(3, 4)), now=0).state == state(web(3, 4))


def test_a_held_default_service_yields_the_default_to_the_one_consul_names_now():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    api = Service("api", (Instance("api", "api-1", "10.0.1.1", 80),), is_default=True)
    verdict = guard.check(state(web(1, 2)), state(api), now=0)
    assert verdict.state.default == api and verdict.state.service("web").instances == web(1, 2).instances


@pytest.mark.parametrize("max_shrink", [1.0])
def test_a_max_shrink_of_100_percent_turns_the_guard_off(max_shrink):
    guard = ShrinkGuard(max_shrink=max_shrink, hold=15)
    assert guard.check(state(web(1, 2)), state(), now=0).state == state()


def test_a_service_that_had_no_instance_cannot_shrink():
    guard = ShrinkGuard(max_shrink=0.0, hold=15)
    assert guard.check(state(web()), state(), now=0).state == state()


def test_a_large_shrink_in_small_steps_is_held_too():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    first = guard.check(state(web(1, 2, 3, 4)), state(web(1, 2, 3)), now=0)  # 25 %: applied
    assert first.state == state(web(1, 2, 3))
    second = guard.check(first.state, state(web(1)), now=1)  # 4 → 1 within 15 s: held
    assert second.state == state(web(1, 2, 3)) and str(second.held[0]).startswith("web: 4 → 1")
    assert guard.check(state(web(1)), state(web(1)), now=17).state == state(web(1))  # out of the window


def test_a_scale_down_in_steps_seconds_apart_is_not_held():
    guard = ShrinkGuard(max_shrink=0.5, hold=15, window=2)
    assert guard.check(state(web(1, 2, 3, 4)), state(web(1, 2, 3)), now=0).state == state(web(1, 2, 3))
    assert guard.check(state(web(1, 2, 3)), state(web(1, 2)), now=6).state == state(web(1, 2))
    assert guard.check(state(web(1, 2)), state(web(1)), now=12).state == state(web(1))  # 3 has left the window


def test_a_confirmed_shrink_starts_a_new_window():
    guard = ShrinkGuard(max_shrink=0.5, hold=15)
    guard.check(state(web(1, 2, 3)), state(web(1)), now=0)
    assert guard.check(state(web(1, 2, 3)), state(web(1)), now=15).confirmed == ("web",)
    after = guard.check(state(web(1)), state(web(1)), now=16)
    assert not after.held and guard.since == {}


def test_a_held_shrink_is_measured_from_where_it_started_until_it_is_due():
    guard = ShrinkGuard(max_shrink=0.5, hold=3, window=3)
    first = guard.check(state(web(1, 2, 3)), state(web(1, 2)), now=0)  # 33 %: applied
    held = guard.check(first.state, state(web(1)), now=0.5)  # 3 → 1 within the window: held
    assert held.held and held.state == state(web(1, 2))
    due = guard.check(held.state, state(web(1)), now=3.5)  # the 3 has left the window by now
    assert due.confirmed == ("web",) and due.state == state(web(1))


def test_a_large_loss_split_across_the_two_applies_of_a_burst_is_held():
    from discovery.watch.coalesce import apply_at, burst_span

    wait_min, wait_max = 0.2, 2.0  # the CLI defaults
    first_apply = apply_at(first=0.0, last=0.0, applied=None, wait_min=wait_min, wait_max=wait_max)
    # The rest of the burst: a change 0.1 s after the first apply, then more until the cap.
    second_apply = apply_at(first=0.1, last=5.0, applied=first_apply, wait_min=wait_min, wait_max=wait_max)
    assert second_apply - first_apply <= burst_span(wait_min, wait_max)
    guard = ShrinkGuard(max_shrink=0.5, hold=15, window=burst_span(wait_min, wait_max))
    ten, five = web(*range(1, 11)), web(*range(1, 6))
    assert guard.check(state(ten), state(five), now=first_apply).state == state(five)  # 50 %: applied
    held = guard.check(state(five), state(web(1, 2, 3)), now=second_apply)  # 10 → 3 in one burst
    assert held.held and held.state == state(five)
