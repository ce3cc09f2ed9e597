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
