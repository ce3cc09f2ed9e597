from discovery.watch.timeline import Timeline


def test_each_phase_is_the_time_since_the_moment_before_in_order():
    timeline = Timeline(consul_answered=10.0, taken=10.001)
    timeline.moments["haproxy"] = 10.0035
    assert timeline.phases_ms() == {"taken": 1.0, "haproxy": 2.5}
    assert timeline.as_status()["moments"] == {"consul_answered": 10.0, "taken": 10.001, "haproxy": 10.0035}


def test_a_mark_is_taken_on_the_monotonic_clock():
    import time

    timeline = Timeline(start=time.monotonic())
    timeline.mark("end")
    assert 0 <= timeline.phases_ms()["end"] < 1000


def test_a_moment_marked_again_moves_to_the_end_so_no_phase_is_negative():
    timeline = Timeline(taken=1.0, rendered=1.001, written=1.002)
    timeline.mark("rendered")  # the Runtime API path gave up: the reload path renders again
    assert list(timeline.moments) == ["taken", "written", "rendered"]
    assert all(ms >= 0 for ms in timeline.phases_ms().values())
