"""The registrator against real Docker and a real Consul agent (run on the host)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from discovery.register.labels import registration
from discovery.register.sync import owned
from tests.support import free_port, http_get, log_text, require, stop_process, wait_until

pytestmark = pytest.mark.integration

IMAGE = "debian:trixie-slim"


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    require("docker")
    client = docker.from_env()
    try:
        client.ping()
        client.images.get(IMAGE)
    except Exception as error:
        pytest.fail(f"Docker with image {IMAGE} is required (run ../shared/env/provision): {error}", pytrace=False)
    yield client
    client.close()


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def webapp_image(docker_client) -> str:
    """The demo web app's image, built from this tree (the e2e suite reuses the build cache)."""
    tag = "discovery/webapp:integration"
    subprocess.run(["docker", "build", "-q", "-f", "images/Dockerfile", "--target", "webapp", "-t", tag, "."],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    return tag


class Containers:
    """Opted-in test containers, all carrying one run label so they are always removed."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.run = uuid.uuid4().hex[:8]

    def start(self, service: str, image: str = IMAGE, command: list[str] | None = None, **labels: str):
        return self.client.containers.run(
            image, command if command is not None else ["sleep", "600"], detach=True, init=True,
            labels={"discovery.service": service, "discovery.port": "8080", "discovery.tags": "lb",
                    "discovery-test": self.run, **labels},
        )

    def remove_all(self) -> None:
        for container in self.client.containers.list(all=True, filters={"label": f"discovery-test={self.run}"}):
            container.remove(force=True)


@pytest.fixture
def containers(docker_client) -> Iterator[Containers]:
    made = Containers(docker_client)
    try:
        yield made
    finally:
        made.remove_all()


@pytest.fixture
def start_registrator(consul_agent, containers, tmp_path: Path):
    owner = f"test-{uuid.uuid4().hex[:8]}"
    listen_port = free_port()
    running: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"register-{len(running)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                # These containers never answer their health path: register them after 1 s anyway.
                [sys.executable, "-m", "discovery.register", "--consul", consul_agent.address, "--id", owner,
                 "--resync", "2s", "--ready-timeout", "1s", "--listen", f"127.0.0.1:{listen_port}",
                 # This test's containers only: other stacks on the same Docker come and go meanwhile.
                 "--only-label", f"discovery-test={containers.run}", *extra],
                stdout=sink, stderr=subprocess.STDOUT,
            )
        running.append(process)
        wait_until(lambda: "reconciled (start)" in log_text(log), "the registrator's first reconcile")
        return process

    start.owner = owner  # type: ignore[attr-defined]
    start.listen_port = listen_port  # type: ignore[attr-defined]
    start.log = tmp_path / "register-0.log"  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for process in running:
            stop_process(process)


def ours(consul_agent, owner: str) -> dict[str, dict]:
    return owned(consul_agent.client.agent.services(), owner)


def expected(containers: Containers, owner: str) -> set[str]:
    """What Consul must hold: one registration per running test container that opted in."""
    wanted = set()
    for container in containers.client.containers.list(filters={"label": f"discovery-test={containers.run}"}):
        reg = registration(container.attrs, owner)
        if reg is not None:
            wanted.add(reg.id)
    return wanted


def test_registers_on_start_and_deregisters_on_stop(consul_agent, containers, start_registrator):
    start_registrator()
    owner = start_registrator.owner
    container = containers.start("regtest", **{"discovery.check.http": "/ready", "discovery.tags": "lb,x"})
    service_id = f"regtest-{container.id[:12]}"
    found = wait_until(lambda: ours(consul_agent, owner).get(service_id), "the container's registration")
    container.reload()
    address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    assert (found["Service"], found["Address"], found["Port"]) == ("regtest", address, 8080)
    assert sorted(found["Tags"]) == ["lb", "x"] and found["Meta"]["container"] == container.id
    checks = consul_agent.client.agent.checks()
    assert any(c["ServiceID"] == service_id and c["Type"] == "http" for c in checks.values())

    container.stop(timeout=1)
    wait_until(lambda: service_id not in ours(consul_agent, owner), "deregistration on stop")


def test_never_touches_registrations_it_does_not_own(consul_agent, containers, start_registrator):
    consul_agent.client.agent.service.register("foreign", service_id="foreign-1", port=1)
    consul_agent.client.agent.service.register(
        "webapp", service_id="other-owner-1", port=2,
        meta={"managed-by": "discovery-registrator", "registrator": "someone-else"},
    )
    start_registrator()
    container = containers.start("regtest")
    wait_until(lambda: f"regtest-{container.id[:12]}" in ours(consul_agent, start_registrator.owner),
               "the registration")
    services = consul_agent.client.agent.services()
    assert "foreign-1" in services and "other-owner-1" in services


def test_restarted_registrator_reconciles_what_it_missed(consul_agent, containers, docker_client,
                                                         start_registrator):
    owner = start_registrator.owner
    registrator = start_registrator()
    kept, gone = containers.start("regtest"), containers.start("regtest")
    both = {f"regtest-{kept.id[:12]}", f"regtest-{gone.id[:12]}"}
    wait_until(lambda: both <= set(ours(consul_agent, owner)), "both registrations")

    registrator.kill()  # SIGKILL: no goodbye, events are missed from here on
    registrator.wait()
    gone.remove(force=True)
    new = containers.start("regtest")
    stale = consul_agent.client.agent.services()
    assert f"regtest-{gone.id[:12]}" in stale and f"regtest-{new.id[:12]}" not in stale

    start_registrator()
    wait_until(lambda: set(ours(consul_agent, owner)) == expected(containers, owner),
               "Consul to match the running containers exactly")
    assert {f"regtest-{kept.id[:12]}", f"regtest-{new.id[:12]}"} <= set(ours(consul_agent, owner))


def test_opted_in_container_with_bad_labels_is_refused_with_a_reason(consul_agent, containers, start_registrator,
                                                                    tmp_path):
    start_registrator()
    containers.start("regtest", **{"discovery.port": "not-a-port"})
    wait_until(lambda: "not registered: port 'not-a-port'" in log_text(tmp_path / "register-0.log"),
               "the refusal in the log")


def test_a_ready_container_is_registered_passing_at_once(consul_agent, containers, start_registrator, webapp_image):
    start_registrator("--ready-timeout", "30s")  # however slowly a busy machine starts the app
    container = containers.start("readytest", image=webapp_image, command=[],
                                 **{"discovery.port": "3000", "discovery.check.interval": "1m"})
    service_id = f"readytest-{container.id[:12]}"
    # With a 1 minute check interval, only the registrator's own probe can make it pass this soon.
    wait_until(lambda: any(e["Service"]["ID"] == service_id
                           for e in consul_agent.client.health.service("readytest", passing=True)[1]),
               "the instance to be passing right after it is ready", timeout=10)
    assert "readytest" in log_text(start_registrator.log) and ", ready)" in log_text(start_registrator.log)


def test_registrator_metrics_count_registrations(consul_agent, containers, start_registrator):
    start_registrator()
    container = containers.start("regtest")
    wait_until(lambda: f"regtest-{container.id[:12]}" in ours(consul_agent, start_registrator.owner),
               "the registration")
    container.stop(timeout=1)
    wait_until(lambda: 'discovery_deregistrations_total{why="kill"} 1.0' in
               http_get(start_registrator.listen_port, "/metrics")[2].decode(), "the deregistration metric")
    metrics = http_get(start_registrator.listen_port, "/metrics")[2].decode()
    assert 'discovery_registrations_total{ready="no"} 1.0' in metrics  # `sleep` never answers /health
    assert 'discovery_docker_events_total{action="start"} 1.0' in metrics


def test_only_containers_with_the_chosen_label_are_seen(consul_agent, containers, docker_client, start_registrator):
    start_registrator()
    # Opted in, but without this run's label: another project's container on the same Docker.
    foreign = docker_client.containers.run(IMAGE, ["sleep", "600"], detach=True, init=True,
                                           labels={"discovery.service": "regtest", "discovery.port": "8080"})
    try:
        ours_too = containers.start("regtest")
        wait_until(lambda: f"regtest-{ours_too.id[:12]}" in ours(consul_agent, start_registrator.owner),
                   "this run's container to be registered")
        assert f"regtest-{foreign.id[:12]}" not in consul_agent.client.agent.services()
    finally:
        foreign.remove(force=True)
