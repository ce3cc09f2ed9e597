from discovery.watch.reload_cap import ReloadCap


def test_the_cap_waits_until_the_oldest_reload_of_the_minute_is_a_minute_old():
    cap = ReloadCap(per_minute=2)
    assert cap.wait(now=0.0) == 0
    cap.record(0.0)
    cap.record(10.0)
    assert cap.wait(now=20.0) == 40.0
    assert cap.in_last_minute(now=20.0) == 2
    assert cap.wait(now=60.5) == 0  # the first one is forgotten
    assert cap.in_last_minute(now=60.5) == 1
