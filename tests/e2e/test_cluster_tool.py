"""`python -m tools.cluster`: simulated Docker hosts that are really apart, and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import require, wait_until
from tools import cluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cluster", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def docker(host: cluster.Host, *args: str) -> str:
    return subprocess.run(["docker", "-H", host.docker_host, *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def leader(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}:8500/v1/status/leader", timeout=2) as answer:
        return str(json.loads(answer.read()))


def test_simulated_hosts_have_engines_of_their_own_reach_each_other_and_go_away_entirely():
    for binary in ("ip", "nsenter", "dockerd"):
        require(binary)
    assert not (cluster.STATE_DIR / "state.json").exists(), "a simulated cluster is up already: not ours to remove"
    h1, h2 = cluster.layout(2).hosts
    up = tool("up", "--hosts", "2")
    assert up.returncode == 0, up.stderr  # a failed `up` removes what it made by itself
    try:
        # A published port on h1, answered at h1's own address from this machine ...
        docker(h1, "run", "-d", "--name", "probe", "-p", "8500:8500", "hashicorp/consul:1.8.7", "agent", "-dev",
               "-client", "0.0.0.0")
        wait_until(lambda: leader(h1.address), "Consul on h1, through its published port", timeout=60)
        # ... and from h2's namespace, across the simulated LAN.
        across = subprocess.run(
            ["nsenter", f"--net=/run/netns/{h2.netns}", sys.executable, "-c",
             f"import urllib.request; print(urllib.request.urlopen('http://{h1.address}:8500/v1/status/leader',"
             " timeout=2).read().decode())"], capture_output=True, text=True, timeout=30)
        assert across.returncode == 0 and ":8300" in across.stdout, across.stderr
        # Each engine is its own: h2 neither runs nor knows h1's container.
        assert docker(h2, "ps", "-aq") == ""
        status = tool("status").stdout.splitlines()
        assert [line.split()[0] for line in status] == ["h1", "h2"]
        assert "1 running" in status[0] and "0 running" in status[1]
    finally:
        down = tool("down")
    assert down.returncode == 0, down.stderr
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert cluster.PREFIX + "-" not in links + namespaces
    assert not Path(h1.pidfile).exists() and not cluster.DATA_DIR.exists() and not cluster.STATE_DIR.exists()
