"""The lab command for real: the compose stack driven through the seed lab's scenario, then every
file it wrote checked (screenshots decode as PNGs of a sensible size, each step's haproxy.cfg lists
exactly the web apps `docker ps` shows running). Ports away from the defaults: other stacks run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.stack import ROOT
from tests.support import require
from tools.lab import SCENARIO, check_report, running_webapps_in, servers_in
from tools.screenshot import PNG_SIGNATURE, png_size

pytestmark = pytest.mark.e2e
PROJECT = "discovery-lab-test"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require("docker")
    output = tmp_path_factory.mktemp("report")
    env = {**os.environ, "CONSUL_IMAGE": os.environ.get("CONSUL_IMAGE", "hashicorp/consul:1.8.7")}
    run = subprocess.run([sys.executable, "-m", "tools.lab", "--output", str(output), "--project", PROJECT,
                          "--http-port", "18080", "--stats-port", "11936", "--consul-port", "18500"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / f"{PROJECT}.log").write_text(run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    return output, run.stderr


def test_progress_is_shown_step_by_step(report):
    _, progress = report
    for number, step in enumerate(SCENARIO, 1):
        assert f"step {number}/{len(SCENARIO)} {step.slug}" in progress
    assert "done:" in progress


def test_the_report_is_complete(report):
    output, _ = report
    assert check_report(output) == []


def test_screenshots_are_pngs_of_a_sensible_size(report):
    output, _ = report
    for step in SCENARIO:
        for name in ("stats.png", "consul-ui.png"):
            data = (output / "logs" / step.slug / name).read_bytes()
            assert data.startswith(PNG_SIGNATURE)
            width, height = png_size(data)
            assert width >= 800 and height >= 400 and len(data) > 10_000, (step.slug, name, width, height)


def test_each_config_lists_exactly_the_running_web_apps(report):
    output, _ = report
    previous: set[str] = set()
    for step in SCENARIO:
        folder = output / "logs" / step.slug
        running = running_webapps_in((folder / "docker-ps.txt").read_text())
        servers = servers_in((folder / "haproxy.cfg").read_text())
        assert len(running) == step.webapps and sorted(servers) == sorted(running), step.slug
        # one change per step: a node added, or one taken away
        assert len(running ^ previous) == (2 if step.action == "up" else 1), step.slug
        previous = running
        # what Docker, Consul, the file and the stats page all agreed on before the files were taken
        assert set(json.loads((folder / "step.json").read_text())["servers"]) == running


def test_no_secret_is_written(report):
    output, _ = report
    config = (output / "logs" / SCENARIO[0].slug / "haproxy.cfg").read_text()
    assert "insecure-password <redacted>" in config


def test_the_stack_is_gone_afterwards(report):
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                          capture_output=True, text=True, check=True).stdout.split()
    networks = subprocess.run(["docker", "network", "ls", "-q", "--filter",
                               f"label=com.docker.compose.project={PROJECT}"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert left == [] and networks == []
