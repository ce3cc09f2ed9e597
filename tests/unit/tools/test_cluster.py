"""The simulated cluster's layout is a pure function of the host count (its IO runs in e2e)."""

from __future__ import annotations

import pytest

from tools import cluster


def test_every_host_has_its_own_namespace_address_subnet_and_engine_paths():
    plan = cluster.layout(3)
    assert [h.name for h in plan.hosts] == ["h1", "h2", "h3"]
    for field in ("netns", "veth", "address", "docker_subnet", "data_root", "exec_root", "socket", "pidfile"):
        assert len({getattr(h, field) for h in plan.hosts}) == 3, field
    assert plan.gateway not in {h.address for h in plan.hosts}
    assert all(h.address.startswith(cluster.NETWORK + ".") for h in plan.hosts)
    # Interface names must fit the kernel's 15 characters, the namespace side's "-in" included.
    assert all(len(f"{h.veth}-in") <= 15 for h in cluster.layout(cluster.MAX_HOSTS).hosts)
    assert cluster.layout(3) == plan  # the same count, the same layout: `down` can rely on it


def test_the_engine_is_entered_with_nsenter_not_ip_netns_exec():
    command = cluster.dockerd_command(cluster.layout(1).hosts[0])
    assert command[:2] == ["nsenter", "--net=/run/netns/dsc-h1"] and "netns" not in command[2:4]
    assert {"--data-root", "--exec-root", "-H", "--pidfile", "--bip"} <= set(command)


@pytest.mark.parametrize("count", [0, -1, cluster.MAX_HOSTS + 1])
def test_a_host_count_out_of_range_is_refused_with_the_range(count):
    with pytest.raises(ValueError, match=f"1 to {cluster.MAX_HOSTS}"):
        cluster.layout(count)


def test_what_was_made_survives_a_round_trip_through_the_state_file(tmp_path):
    record = cluster.Record(cluster.layout(2), ["h1"], bridge=True)
    record.save(tmp_path / "state.json")
    assert cluster.Record.load(tmp_path / "state.json") == record
    assert cluster.Record.load(tmp_path / "missing.json") is None


def test_down_with_nothing_recorded_does_nothing(tmp_path):
    assert cluster.Cluster(tmp_path).down() == []
    assert cluster.Cluster(tmp_path).status() == ["no cluster (python -m tools.cluster up --hosts N)"]
