import pytest

from discovery.register.containers import ContainerEvent, _event

CONTAINER = "4f66ad9a0b2e" + "5d" * 26


@pytest.mark.parametrize(
    ("action", "signal", "stops", "starts"),
    [
        ("kill", "15", True, False),
        ("kill", "SIGTERM", True, False),
        ("kill", "9", True, False),
        ("kill", "1", False, False),
        ("kill", "SIGHUP", False, False),
        ("kill", None, False, False),
        ("die", None, True, False),
        ("stop", None, True, False),
        ("oom", None, True, False),
        ("start", None, False, True),
        ("restart", None, False, True),
        ("unpause", None, False, True),
        ("health_status", None, False, False),
        ("exec_start", None, False, False),
    ],
)
def test_event_stops_and_starts(action, signal, stops, starts):
    event = ContainerEvent(action, CONTAINER, 1, signal)
    assert (event.stops, event.starts) == (stops, starts)


def docker_event(action, **attributes):
    """An event as Docker's /events stream decodes it (API >= 1.22)."""
    return {
        "status": action, "id": CONTAINER, "from": "demo/web:1", "Type": "container", "Action": action,
        "Actor": {"ID": CONTAINER, "Attributes": {"image": "demo/web:1", "name": "app-web-1", **attributes}},
        "scope": "local", "time": 1732520000, "timeNano": 1732520000123456789,
    }


def test_kill_event_is_parsed_with_its_signal():
    event = _event(docker_event("kill", signal="15"))
    assert event == ContainerEvent("kill", CONTAINER, 1732520000123456789, "15")
    assert event.stops


def test_action_detail_after_a_colon_is_dropped():
    raw = {"Type": "container", "Action": "health_status: healthy", "Actor": {"ID": "abc", "Attributes":
           {"signal": "15"}}, "timeNano": 123}
    assert _event(raw) == ContainerEvent("health_status", "abc", 123, "15")


def test_event_without_attributes_or_time_still_parses():
    assert _event({"Action": "die", "Actor": {"ID": "abc"}}) == ContainerEvent("die", "abc", 0, None)


@pytest.mark.parametrize(
    "raw",
    [{}, {"Action": "start", "Actor": {"Attributes": {}}}, {"Actor": {"ID": "abc"}}, {"Action": "", "id": "abc"}],
)
def test_event_without_action_or_container_is_skipped(raw):
    assert _event(raw) is None
