import pytest

from discovery.model import Instance, ServerKey
from discovery.watch.drain import Drain, DrainStep, drain_step

DRAIN = Drain(Instance("web", "web-1", "10.0.0.1", 80), since=100.0, deadline=130.0)


@pytest.mark.parametrize(
    ("busy", "now", "expected"),
    [
        (3, 101.0, DrainStep.WAIT),  # requests in flight, time left: let them finish
        (0, 101.0, DrainStep.DELETE),  # the last request ended: delete at once
        (0, 200.0, DrainStep.DELETE),  # idle past the deadline: a plain delete, nothing to cut
        (3, 130.0, DrainStep.CUT),  # the deadline is reached: cut what is left
        (1, 500.0, DrainStep.CUT),
        (None, 101.0, DrainStep.FORGET),  # HAProxy no longer has it (a reload ended it)
        (None, 500.0, DrainStep.FORGET),
    ],
)
def test_drain_rule(busy, now, expected):
    assert drain_step(DRAIN, busy, now) is expected


def test_a_drain_is_keyed_as_haproxy_names_the_server():
    assert DRAIN.key == ServerKey("be_web", DRAIN.instance.server_name)
    assert str(DRAIN.key) == f"be_web/{DRAIN.instance.server_name}"
