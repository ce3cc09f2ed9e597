"""The benchmark's verdicts are computed from the run they judge, never written by hand."""

import math

from bench import report


def run(**samples):
    base = {key: [0.001] * 5 for key, _ in report.LATENCIES} | {"held_shrink_applied": [15.2]}
    figures = {"load_scale_events": {"events": 10, "requests": 5000, "rate": 1200.0, "failed": 0},
               "load_forced_reloads": {"reloads": 20, "requests": 6000, "rate": 1300.0, "failed": 0},
               "scale": {shape: {"services": 100, "instances": 1000, "full_apply_ms": 200.0, "haproxy_check_ms": 30.0,
                                 "consul_answer_ms": 2.0,
                                 "one_change_outside_traces": [dict.fromkeys(dict(report.PHASES), 1.0)],
                                 "one_change_ms": [5.0, 6.0], "one_change_outside_s": [0.001, 0.002],
                                 "watcher_rss_mib": 60.0, "consul_requests_per_minute_idle": 104.0,
                                 "blocking_queries": 101, "idle_seconds": 60} for shape in report.SCALE_SHAPES},
               "balance": {"algorithm": "roundrobin", "servers": 10000, "requests": 20000, "answered": 20000,
                           "servers_listed": 10000, "never_used": 0, "fewest": 2, "most": 2},
               "traces": {row: [dict.fromkeys(dict(report.PHASES), 0.1)] * 5 for row in report.TRACED}}
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
    busy["figures"]["scale"]["1x10000"]["consul_requests_per_minute_idle"] = 5000.0
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
    nan = run(ready_to_routable=[0.01, float("nan"), 0.01, 0.01, 0.01])
    assert report.missing(nan) == ["ready_to_routable: a sample is not a measurement"]
    idle = run()
    idle["figures"]["load_forced_reloads"]["requests"] = 0
    assert report.missing(idle) == ["load_forced_reloads: no request was sent"]
    del idle["figures"]["scale"]["500x20"]
    assert "no scale figures for 500x20" in report.missing(idle)
    untraced = run()
    untraced["figures"]["traces"]["passing_to_routable"].pop()
    assert report.missing(untraced) == ["passing_to_routable: not every sample has its trace"]


def test_serf_rows_may_be_left_out_only_when_asked():
    result = run(serf_join=[], serf_leave=[], serf_crash=[])
    assert len(report.missing(result)) == 3
    assert report.missing(result | {"skip_serf": True}) == []


def test_one_change_at_scale_is_judged_against_the_small_service_p99_of_the_same_run():
    result = run(passing_to_routable=[0.010] * 10)  # p99 10 ms: the bound is 20 ms
    met = next(row for row in report.table(result).splitlines() if "(1x10000)" in row)
    assert "10,000" not in met  # the title comes from the shape's own counts
    rows = report.table(result).split("(1x10000)")[1].splitlines()
    assert any(row.endswith("met (p99 ≤ 2 \u00d7 passing → routable p99 = 20.0 ms) |") for row in rows[:12])
    result["figures"]["scale"]["1x10000"]["one_change_outside_s"] = [0.030, 0.030]
    rows = report.table(result).split("(1x10000)")[1].splitlines()
    assert any(row.endswith("MISSED (p99 ≤ 2 \u00d7 passing → routable p99 = 20.0 ms) |") for row in rows[:12])


def test_the_traces_table_shows_every_phase_in_order():
    lines = report.trace_table("kill_to_out_of_rotation",
                               [{key: float(k + 1) for k, (key, _) in enumerate(report.PHASES)}] * 3)
    assert lines[1].startswith("| kill -9 → out of rotation: per-sample traces (n=3)")
    labels = [label for _, label in report.PHASES]
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[3:]] == labels
    assert lines[3].endswith("| 1.00 | 1.00 | 1.00 |")  # 1 ms, shown in ms


def test_the_balance_row_is_met_only_when_every_server_got_the_same_share():
    assert "| 0 | met (every server, evenly) |" in report.table(run())
    skewed = run()
    skewed["figures"]["balance"] |= {"never_used": 774, "fewest": 0, "most": 7}
    assert "| 774 | MISSED (every server, evenly) |" in report.table(skewed)
