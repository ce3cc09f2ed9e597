"""Real processes for tests and benchmarks, on free loopback ports: a `consul agent -dev`, demo
web apps, and the watcher with the HAProxy it manages. Each starter is a context manager that
always cleans up."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import consul

from discovery.haproxy.config import file_servers
from discovery.haproxy.sockets import MasterCLI, RuntimeAPI
from tests.support import free_port, get_json, log_text, require, stop_process, wait_until


@dataclass
class ConsulAgent:
    port: int
    process: subprocess.Popen[bytes]
    client: consul.Consul

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def register(self, service_id: str, name: str, port: int, tags: tuple[str, ...] = ("lb", "lb.default"),
                 check_path: str | None = "/health", timeout: str | None = None) -> None:
        check = consul.Check.http(f"http://127.0.0.1:{port}{check_path}", "500ms", timeout=timeout) \
            if check_path else None
        self.client.agent.service.register(name, service_id=service_id, address="127.0.0.1", port=port,
                                           tags=list(tags), check=check)

    def wait_passing(self, name: str, count: int) -> None:
        wait_until(lambda: len(self.client.health.service(name, passing=True)[1]) == count,
                   f"{count} passing instance(s) of {name} in Consul")

    def deregister(self, service_id: str) -> None:
        self.client.agent.service.deregister(service_id)


@contextlib.contextmanager
def consul_dev(tmp_path: Path, *extra: str) -> Iterator[ConsulAgent]:
    """`consul agent -dev` on free loopback ports; `extra` flags are appended."""
    binary = require("consul")
    port = free_port()
    ports = {flag: free_port() for flag in ("-serf-lan-port", "-serf-wan-port", "-server-port")}
    command = [binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-http-port", str(port),
               "-dns-port", "-1", "-grpc-port", "-1", "-node", f"test-{port}",
               *[f"{flag}={value}" for flag, value in ports.items()], *extra]
    log = tmp_path / "consul.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    client = consul.Consul(host="127.0.0.1", port=port)
    agent = ConsulAgent(port, process, client)
    try:
        wait_until(lambda: process.poll() is None and client.status.leader(), "Consul to elect itself leader",
                   timeout=30)
        yield agent
    finally:
        stop_process(process)


class ConsulServer(ConsulAgent):
    """A `consul agent -server` with a data directory (not -dev): it can be stopped, restarted on
    the same ports with its data kept or wiped, and restored from a snapshot."""

    def __init__(self, tmp_path: Path) -> None:
        self.binary = require("consul")
        self.data = tmp_path / "consul-data"
        self.log = tmp_path / "consul.log"
        port = free_port()
        self.ports = {flag: free_port() for flag in ("-serf-lan-port", "-serf-wan-port", "-server-port")}
        super().__init__(port, None, consul.Consul(host="127.0.0.1", port=port))  # type: ignore[arg-type]

    def start(self) -> None:
        command = [self.binary, "agent", "-server", "-bootstrap-expect", "1", "-data-dir", str(self.data),
                   "-bind", "127.0.0.1", "-client", "127.0.0.1", "-http-port", str(self.port), "-dns-port", "-1",
                   "-grpc-port", "-1", "-node", f"server-{self.port}", "-hcl", "performance { raft_multiplier = 1 }",
                   *[f"{flag}={value}" for flag, value in self.ports.items()]]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        wait_until(lambda: self.process.poll() is None and self.client.status.leader(),
                   "the Consul server to elect itself leader", timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def wipe(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)

    def snapshot(self, action: str, path: Path) -> None:
        """`consul snapshot save|restore <path>` against this agent."""
        subprocess.run([self.binary, "snapshot", action, f"-http-addr=127.0.0.1:{self.port}", str(path)],
                       check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def consul_server(tmp_path: Path) -> Iterator[ConsulServer]:
    server = ConsulServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass
class WebApps:
    """Demo web apps on loopback, told apart by their TAG."""

    processes: dict[str, tuple[int, subprocess.Popen[bytes]]] = field(default_factory=dict)

    def start(self, tag: str) -> int:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "demo.webapp", "--host", "127.0.0.1", "--port", str(port), "--tag", tag],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPOSITORY,  # demo/ is not installed
        )
        self.processes[tag] = (port, process)
        wait_until(lambda: get_json(port, "/health"), f"web app {tag} to answer")
        return port

    def stop(self, tag: str) -> None:
        stop_process(self.processes.pop(tag)[1])

    def stop_all(self) -> None:
        for tag in list(self.processes):
            self.stop(tag)


@dataclass
class Watcher:
    process: subprocess.Popen[bytes]
    output: Path
    log: Path
    http_port: int
    stats_port: int
    sockets: Path
    status_port: int

    def reloads(self) -> int:
        return asyncio.run(MasterCLI(self.sockets / "master.sock").processes()).master_reloads

    def runtime_servers(self) -> set[tuple[str, str, str]]:
        """(backend, server, address:port) of every server the running HAProxy has."""
        return asyncio.run(RuntimeAPI(self.sockets / "admin.sock").servers())

    def file_servers(self) -> set[tuple[str, str, str]]:
        return file_servers(self.config)

    def sessions(self, backend: str, server: str) -> int:
        live = asyncio.run(RuntimeAPI(self.sockets / "admin.sock").stats()).get((backend, server))
        return live.sessions if live else 0

    def admin_state(self, server: str) -> int:
        lines = asyncio.run(RuntimeAPI(self.sockets / "admin.sock").server_state()).splitlines()[2:]
        return next(int(w[6]) for w in (line.split() for line in lines) if len(w) > 6 and w[3] == server)

    @property
    def config(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    def server_lines(self) -> list[str]:
        return [line.split()[1] for line in self.config.splitlines() if line.strip().startswith("server ")]

    def log_text(self) -> str:
        return log_text(self.log)

    def stats_credentials(self) -> dict[str, str]:
        """The Authorization header for the stats page, from the password file the watcher made."""
        password = (self.sockets / "stats-password").read_text().strip()
        return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}

    def tags_served(self, requests: int = 12) -> set[str]:
        return {get_json(self.http_port)["tag"] for _ in range(requests)}


@contextlib.contextmanager
def watcher_process(tmp_path: Path, consul_address: str, *extra: str, name: str = "watch",
                    wait_for_haproxy: bool = True) -> Iterator[Watcher]:
    """`python -m discovery.watch --manage-haproxy` on free loopback ports, files in `tmp_path`."""
    require("haproxy")
    http_port, stats_port, status_port = free_port(), free_port(), free_port()
    output = tmp_path / "haproxy.cfg"
    log = tmp_path / f"{name}.log"
    command = [
        sys.executable, "-m", "discovery.watch", "--consul", consul_address,
        "--output", str(output), "--master-socket", str(tmp_path / "master.sock"),
        "--runtime-socket", str(tmp_path / "admin.sock"), "--manage-haproxy",
        "--http-bind", f"127.0.0.1:{http_port}", "--stats-bind", f"127.0.0.1:{stats_port}",
        "--listen", f"127.0.0.1:{status_port}", "--wait-min", "50ms", "--wait-max", "500ms", *extra,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    watcher = Watcher(process, output, log, http_port, stats_port, tmp_path, status_port)
    try:
        if wait_for_haproxy:
            wait_until(lambda: "haproxy started" in watcher.log_text(), "the watcher to start HAProxy")
        yield watcher
    finally:
        stop_process(process)
