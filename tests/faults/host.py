"""The whole system as host processes, for the fault cases that need no compose stack: a Consul
server (not -dev: it can be stopped, wiped and restored), the registrator on the host against the
real Docker daemon, demo web app containers it registers, and the watcher with its HAProxy.

Everything runs on free loopback ports under a tag prefix of its own, so that it never meets
other stacks on this Docker host (the registrator registers their containers into our Consul
too, but our watcher only routes the prefix it was given)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
from aiohttp import web

from discovery.haproxy.sockets import RuntimeAPI
from discovery.register.sync import owned
from tests.processes import ConsulServer, Watcher, consul_server, watcher_process
from tests.support import NeverEmpty, free_port, get_json, http_get, log_text, require, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "discovery/webapp:faults"
SERVICE = "web"
BACKEND = f"be_{SERVICE}"


def webapp_image() -> str:
    """The demo web app's image, built from this tree (the build cache makes it quick)."""
    require("docker")
    subprocess.run(["docker", "build", "-q", "-f", "images/Dockerfile", "--target", "webapp", "-t", IMAGE, "."],
                   cwd=ROOT, check=True, capture_output=True, timeout=900)
    return IMAGE


class IndexProxy:
    """An HTTP proxy in front of Consul that, while `zero` is set, answers every read with
    `X-Consul-Index: 0` (a Consul bug that has happened: blocking queries then return at once)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.zero = False
        self.zeroed = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("x-consul-token", "content-type")}
        async with self._session.request(request.method, f"http://127.0.0.1:{self.upstream}{request.path_qs}",
                                         headers=headers, data=await request.read()) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower().startswith("x-consul-")}
            kept["Content-Type"] = answer.headers.get("Content-Type", "application/json")
        if self.zero and "X-Consul-Index" in kept:
            kept["X-Consul-Index"] = "0"
            self.zeroed += 1
        return web.Response(status=answer.status, body=body, headers=kept)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)  # blocking queries in flight
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    def __enter__(self) -> IndexProxy:
        self._session: aiohttp.ClientSession | None = None
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class HostStack:
    def __init__(self, tmp_path: Path, docker_client: docker.DockerClient) -> None:
        self.tmp = tmp_path
        self.docker = docker_client
        self.run = uuid.uuid4().hex[:8]
        self.prefix = f"ft{self.run}"
        self.owner = f"faults-{self.run}"
        self.consul: ConsulServer
        self.watcher: Watcher
        self.registrator: subprocess.Popen[bytes] | None = None
        self.registrator_log = tmp_path / "register.log"
        self.registrator_port = free_port()
        self.docker_url: str | None = None
        self.proxy: IndexProxy | None = None

    # --- containers

    def start_webapp(self) -> Any:
        return self.docker.containers.run(
            IMAGE, detach=True, init=True,
            labels={"discovery.service": SERVICE, "discovery.tags": f"{self.prefix},{self.prefix}.default",
                    "discovery.check.interval": "1s", "discovery.check.timeout": "1s", "discovery-test": self.run},
        )

    def webapps(self) -> list[Any]:
        return self.docker.containers.list(filters={"label": f"discovery-test={self.run}", "status": "running"},
                                           ignore_removed=True)

    def remove_all(self) -> None:
        for container in self.docker.containers.list(all=True, filters={"label": f"discovery-test={self.run}"}):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    # --- the registrator

    def start_registrator(self, resync: str = "30s") -> None:
        docker_flags = ["--docker", self.docker_url] if self.docker_url else []
        with self.registrator_log.open("ab") as sink:
            self.registrator = subprocess.Popen(
                [sys.executable, "-m", "discovery.register", "--consul", self.consul.address, "--id", self.owner,
                 "--resync", resync, "--listen", f"127.0.0.1:{self.registrator_port}", *docker_flags],
                stdout=sink, stderr=subprocess.STDOUT,
            )

    def kill_registrator(self) -> None:
        assert self.registrator is not None
        self.registrator.kill()
        self.registrator.wait()

    def registrator_text(self) -> str:
        return log_text(self.registrator_log)

    # --- what each side says

    def ours(self) -> set[str]:
        """Our registrator's registrations of our service (it registers other stacks' containers
        too, which come and go on their own)."""
        return {sid for sid, s in owned(self.consul.client.agent.services(), self.owner).items()
                if s["Service"] == SERVICE}

    def ours_running(self) -> set[str]:
        return {f"{SERVICE}-{c.id[:12]}" for c in self.webapps()}

    def passing(self) -> set[str]:
        return {e["Service"]["ID"] for e in self.consul.client.health.service(SERVICE, passing=True)[1]}

    def served(self) -> set[str]:
        """Server names HAProxy runs in the backend, draining ones left out."""
        return {name for _, name, _ in self.watcher.runtime_servers()} - self.draining()

    def draining(self) -> set[str]:
        lines = asyncio.run(RuntimeAPI(self.watcher.sockets / "admin.sock").server_state()).splitlines()[2:]
        return {w[3] for w in (line.split() for line in lines) if len(w) > 6 and int(w[6]) & 0x08}

    def status(self) -> dict[str, Any]:
        return dict(get_json(self.watcher.status_port, "/status"))

    def metric(self, sample: str) -> float:
        for line in http_get(self.watcher.status_port, "/metrics")[2].decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0

    def describe(self) -> str:
        return (f"ours={sorted(self.ours())} running={sorted(self.ours_running())} "
                f"passing={sorted(self.passing())} served={sorted(self.served())}")

    def whole(self) -> bool:
        """Consul holds exactly the running containers, all passing, and HAProxy serves them all."""
        running = self.ours_running()
        return (self.ours() == running and running <= self.passing()
                and self.served() == running)


@contextlib.contextmanager
def host_stack(tmp_path: Path, docker_client: docker.DockerClient, instances: int = 3,
               watcher_flags: tuple[str, ...] = (), docker_url: str | None = None,
               index_proxy: bool = False) -> Iterator[HostStack]:
    """The stack; with `index_proxy`, the watcher reaches Consul through an IndexProxy."""
    stack = HostStack(tmp_path, docker_client)
    stack.docker_url = docker_url
    try:
        with consul_server(tmp_path) as server, contextlib.ExitStack() as proxies:
            stack.consul = server
            address = server.address
            if index_proxy:
                stack.proxy = proxies.enter_context(IndexProxy(server.port))
                address = f"http://127.0.0.1:{stack.proxy.port}"
            stack.start_registrator()
            for _ in range(instances):
                stack.start_webapp()
            with watcher_process(tmp_path, address, "--tag-prefix", stack.prefix, "--wait-min", "100ms",
                                 "--wait-max", "1s", *watcher_flags) as watcher:
                stack.watcher = watcher
                wait_until(lambda: len(stack.ours_running()) == instances and stack.whole(),
                           f"{instances} web apps registered and served", timeout=60)
                yield stack
    finally:
        if stack.registrator is not None:
            stop_process(stack.registrator)
        stack.remove_all()


class EmptyBackendProbe(NeverEmpty):
    """Samples the rendered file and HAProxy's runtime server list every 20 ms while a fault
    runs: a sample in which either has no serving server in the backend counts as empty."""

    def __init__(self, watcher: Watcher, backend: str = BACKEND) -> None:
        self.watcher = watcher
        self.backend = backend
        super().__init__(self._serving, every=0.02)

    def _file_servers(self) -> set[str]:
        serving, current = set(), None
        for line in self.watcher.config.splitlines():
            words = line.split()
            if words[:1] == ["backend"]:
                current = words[1]
            elif current == self.backend and words[:1] == ["server"] and "disabled" not in words:
                serving.add(words[1])
        return serving

    def _runtime_servers(self) -> set[str] | None:
        try:
            lines = asyncio.run(RuntimeAPI(self.watcher.sockets / "admin.sock").server_state()).splitlines()[2:]
        except Exception:  # the socket is handed over during a reload: no reading, not an empty backend
            return None
        rows = [w for w in (line.split() for line in lines) if len(w) > 6 and w[1] == self.backend]
        return {w[3] for w in rows if not int(w[6]) & 0x7F}  # neither in maintenance nor draining

    def _serving(self) -> set[str]:
        in_file, in_runtime = self._file_servers(), self._runtime_servers()
        return set() if not in_file or in_runtime == set() else in_file


FAILING_BACKEND = """
import http.server, json, os, sys
flag = sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        failing = os.path.exists(flag)
        body = json.dumps({"tag": "failing" if failing else "ok"}).encode()
        self.send_response(500 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@contextlib.contextmanager
def failing_backend(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A back end that answers 200 until its flag file exists, then 500 to everything, /health too."""
    port, flag = free_port(), tmp_path / "fail-now"
    process = subprocess.Popen([sys.executable, "-c", FAILING_BACKEND, str(port), str(flag)])
    try:
        wait_until(lambda: http_get(port, "/health")[0] == 200, "the failing back end to answer")
        yield port, flag
    finally:
        stop_process(process)
