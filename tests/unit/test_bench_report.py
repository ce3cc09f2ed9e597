"""The benchmark's verdicts are computed from the run they judge, never written by hand."""

import math

from bench import report


def run(**samples):
    base = {key: [0.001] * 5 for key, _ in report.LATENCIES} | {"held_shrink_applied": [15.2]}
    figures = {"load_scale_events": {"events": 10, "requests": 5000, "rate": 1200.0, "failed": 0},
               "load_forced_reloads": {"reloads": 20, "requests": 6000, "rate": 1300.0, "failed": 0},
               "scale": {"full_apply_ms": 200.0, "one_change_ms": [5.0, 6.0], "one_change_outside_s": [0.01, 0.02],
                         "watcher_rss_mib": 60.0, "consul_requests_per_minute_idle": 104.0, "blocking_queries": 101,
                         "idle_seconds": 60}}
    return {"samples": base | samples, "figures": figures, "skip_serf": False}


def test_passing_to_routable_is_judged_against_twice_the_floor_of_the_same_run():
    samples = {"consul_wake": [0.004] * 10, "runtime_add_enable": [0.001] * 10, "passing_to_routable": [0.009] * 10}
    (p50, value, bound), _ = report.targets(samples)["passing_to_routable"]
    assert p50 == "p50" and math.isclose(bound, 0.010) and value == 0.009
    assert "met (p50 ≤ 10.0 ms)" in report.table(run(**samples))
    slower = samples | {"passing_to_routable": [0.011] * 10}
    assert "MISSED (p50 ≤ 10.0 ms)" in report.table(run(**slower))


def test_a_p99_target_is_judged_on_the_p99():
    fast_median_slow_tail = [0.005] * 98 + [0.2, 0.2]
    line = next(row for row in report.table(run(kill_to_out_of_rotation=fast_median_slow_tail)).splitlines()
                if "kill -9 → out of rotation" in row)
    assert "MISSED (p99 ≤ 50.0 ms)" in line


def test_renewals_are_counted_not_asserted_by_text():
    assert report.renewals_bound(101, 60) == 202
    assert report.renewals_bound(101, 15) == 404
    assert "blocking-query renewals only (≤ 202)" in report.table(run())
    busy = run()
    busy["figures"]["scale"]["consul_requests_per_minute_idle"] = 5000.0
    assert "MORE than renewals" in report.table(busy)


def test_the_guarded_row_is_met_only_when_the_shrink_was_held_for_the_hold():
    assert "met (held 15 s" in report.table(run(held_shrink_applied=[15.1, 15.3]))
    assert "MISSED (held 15 s" in report.table(run(held_shrink_applied=[0.2]))  # let through
    assert "MISSED (held 15 s" in report.table(run(held_shrink_applied=[19.0]))  # applied late


def test_a_complete_run_has_nothing_missing():
    assert report.missing(run()) == []


def test_a_missing_row_or_a_sample_that_is_no_measurement_fails_the_run():
    result = run(kill_to_out_of_rotation=[])
    assert report.missing(result) == ["no samples for kill_to_out_of_rotation"]
    nan = run(ready_to_routable=[0.01, float("nan")])
    assert report.missing(nan) == ["ready_to_routable: a sample is not a measurement"]
    idle = run()
    idle["figures"]["load_forced_reloads"]["requests"] = 0
    assert report.missing(idle) == ["load_forced_reloads: no request was sent"]
    del idle["figures"]["scale"]
    assert "no scale figures" in report.missing(idle)


def test_serf_rows_may_be_left_out_only_when_asked():
    result = run(serf_join=[], serf_leave=[], serf_crash=[])
    assert len(report.missing(result)) == 3
    assert report.missing(result | {"skip_serf": True}) == []
