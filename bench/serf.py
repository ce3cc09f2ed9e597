"""The Serf baseline: the seed lab's final design rebuilt on loopback, measured like the project.

One "ha" Serf agent runs baselines/serf/handler.sh on member-join, member-leave and member-failed:
one file per node in nodes/, haproxy.cfg re-rendered from a template, HAProxy restarted with
`-D -sf <old pid>`. A web node is a demo web app plus its own Serf agent (tags role=backend and
port=<web app port>) that joins the ha agent. No Docker: every process runs on 127.0.0.1.

- join: the web app already answers; from just before its agent starts until the first request
  through HAProxy that it serves. It is the only web node, so HAProxy answered 503 until then.
- leave: from just before `serf leave` on its agent until the last request it serves through
  HAProxy; polled until its server is gone from the running HAProxy, then TAIL more.
- crash: from just before `kill -9` of its agent and web app until the running HAProxy no longer
  has its server (`show stat` on the stats socket every 10 ms; HAProxy's own check may mark it
  DOWN earlier, but the membership system is what is measured).

Serf runs with its defaults, as in the lab; they explain the figures:
- agent: member events are coalesced until 1 s passes without a new one (QuiescentPeriod), 3 s
  at most (CoalescePeriod). Every figure includes at least 1 s.
- gossip (memberlist LAN profile): messages piggyback on gossip every 200 ms to 3 nodes. A join
  or a graceful leave thus reaches ha within a few hundred ms, then waits out the coalescing.
- failure detection: a probe every 1 s (ProbeInterval) to one member in turn, 500 ms timeout,
  then indirect probes through 3 others; the suspect is declared failed after
  SuspicionMult 4 × ProbeInterval × max(1, log10 members) = 4 s. From 4 members on, that 4 s
  needs 2 other members confirming the suspicion; without them the timeout starts at 6× that
  (SuspicionMaxTimeoutMult) and shrinks with each confirmation. Hence live bystanders below.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.probe import LastSeen, first_time, tag_of
from discovery.haproxy import HAProxyError
from discovery.runtime import RuntimeAPI
from tests.support import get_json, stop_process, wait_until

HERE = Path(__file__).resolve().parent / "baselines" / "serf"
HANDLER = HERE / "handler.sh"
TEMPLATE = HERE / "haproxy.cfg.tmpl"
BACKEND = "nodes"  # the backend in haproxy.cfg.tmpl (the lab's name)

BYSTANDERS = 2  # live web nodes while others crash, like the lab's s1 and s2: they probe and confirm too
CRASH_BATCH = 3  # nodes killed together; each is timed from its own kill to its own removal
TAIL = 0.3  # seconds of polling after a leaving server is gone: the old HAProxy may still answer
TIMEOUT = 60.0  # seconds any one change may take before the run fails
STATS_EVERY = 0.01  # seconds between `show stat` queries


def ensure_serf(log: Callable[[str], None]) -> str:
    """The serf binary; installed from Debian when missing (needs root, as bench/run does)."""
    found = shutil.which("serf")
    if found:
        return found
    log("[serf] serf is not installed: apt-get install -y serf")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "serf"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    found = shutil.which("serf")
    if not found:
        raise RuntimeError("serf is still missing after apt-get install serf")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free for TCP and UDP (Serf gossips on both)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket()
            held.append(tcp)
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            with contextlib.suppress(OSError):
                udp.bind(("127.0.0.1", port))
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


@dataclass
class WebNode:
    name: str
    port: int  # the web app's
    gossip: int  # serf -bind
    rpc: int  # serf -rpc-addr
    app: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes] | None = None


class Lab:
    """The ha agent with its HAProxy, and the web nodes of one run; every file in `directory`."""

    def __init__(self, serf: str, directory: Path) -> None:
        self.serf = serf
        self.dir = directory
        (directory / "nodes").mkdir()
        self.config = directory / "haproxy.cfg"
        # A unix socket path must fit in 108 bytes; a deep workdir gets a short directory instead.
        short = len(str(directory / "admin.sock")) >= 100
        self._socket_dir = Path(tempfile.mkdtemp(prefix="serf-")) if short else directory
        self.socket = self._socket_dir / "admin.sock"
        self.frontend, self._ha_gossip, self._ha_rpc = free_ports(3)
        self._runtime = RuntimeAPI(self.socket, timeout=0.5)
        self._ha: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, WebNode] = {}

    def start(self) -> None:
        env = {**os.environ, "SERF_LAB_DIR": str(self.dir), "SERF_LAB_TEMPLATE": str(TEMPLATE),
               "SERF_LAB_SOCKET": str(self.socket), "SERF_LAB_FRONTEND": f"127.0.0.1:{self.frontend}"}
        # HAProxy first, with no servers, as the lab's s6 started it with the ha container.
        subprocess.run([str(HANDLER), "reload"], env=env, check=True)
        wait_until(lambda: self.servers() == set(), "HAProxy's stats socket")
        handler = shlex.quote(str(HANDLER))  # serf runs handlers through /bin/sh -c
        # Its own session, so that close() also ends a handler it is running (and the restart in it).
        self._ha = self._spawn("ha", [
            self.serf, "agent", "-node", "ha", "-bind", f"127.0.0.1:{self._ha_gossip}",
            "-rpc-addr", f"127.0.0.1:{self._ha_rpc}", "-tag", "role=balancer",
            "-event-handler", f"member-join={handler}",
            "-event-handler", f"member-leave,member-failed={handler}",
        ], env=env, session=True)
        wait_until(lambda: self.members(self._ha_rpc).get("ha") == "alive", "the ha Serf agent")

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None,
               session: bool = False) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("ab") as sink:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=session)

    def members(self, rpc: int) -> dict[str, str]:
        """name → status (alive, leaving, left, failed) as the agent on `rpc` sees the cluster."""
        answer = subprocess.run([self.serf, "members", f"-rpc-addr=127.0.0.1:{rpc}", "-format=json"],
                                capture_output=True, timeout=5, check=True)
        return {m["name"]: m["status"] for m in json.loads(answer.stdout)["members"]}

    def sees_alive(self, rpc: int, names: list[str]) -> bool:
        members = self.members(rpc)
        return all(members.get(name) == "alive" for name in names)

    def servers(self) -> set[str] | None:
        """Servers of the running HAProxy's backend; None while its socket gives no full answer."""
        try:
            text = asyncio.run(self._runtime.command("show stat"))
        except HAProxyError:
            return None
        rows = [line.split(",", 2)[:2] for line in text.splitlines() if line.startswith(f"{BACKEND},")]
        # A cut answer must never read as "the server is gone": the BACKEND row closes the section.
        if [BACKEND, "BACKEND"] not in rows:
            return None
        return {name for _, name in rows if name != "BACKEND"}

    def lacks(self, name: str) -> bool:
        servers = self.servers()
        return servers is not None and name not in servers

    def add_web(self, name: str) -> WebNode:
        """A web app (not waited for): its agent starts later, with join()."""
        port, gossip, rpc = free_ports(3)
        app = self._spawn(f"{name}.app", [sys.executable, "-m", "discovery.webapp", "--host", "127.0.0.1",
                                          "--port", str(port), "--tag", name])
        node = self.nodes[name] = WebNode(name, port, gossip, rpc, app)
        return node

    def wait_ready(self, node: WebNode) -> None:
        wait_until(lambda: get_json(node.port, "/health", timeout=0.5)["status"] == "ok", f"web app {node.name}")

    def join(self, node: WebNode) -> None:
        node.agent = self._spawn(f"{node.name}.serf", [
            self.serf, "agent", "-node", node.name, "-bind", f"127.0.0.1:{node.gossip}",
            "-rpc-addr", f"127.0.0.1:{node.rpc}", "-tag", "role=backend", "-tag", f"port={node.port}",
            "-join", f"127.0.0.1:{self._ha_gossip}",
        ])

    def leave(self, node: WebNode) -> subprocess.Popen[bytes]:
        """`serf leave` through the node's RPC address; it returns once the agent has left."""
        return self._spawn(f"{node.name}.leave", [self.serf, "leave", f"-rpc-addr=127.0.0.1:{node.rpc}"])

    def crash(self, node: WebNode) -> None:
        for process in (node.agent, node.app):
            if process is not None:
                process.kill()

    def remove(self, node: WebNode) -> None:
        """Ends what is left of a node (a left agent exits by itself) and forgets it."""
        if node.agent is not None:
            try:
                node.agent.wait(10)
            except subprocess.TimeoutExpired:
                node.agent.kill()
                node.agent.wait()
        stop_process(node.app)
        del self.nodes[node.name]

    def haproxy_pids(self) -> list[int]:
        """Every HAProxy of this run, old ones included: their command line names our config."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if str(self.config).encode() in argv and Path(argv[0].decode()).name == "haproxy":
                        pids.append(int(entry.name))
        return pids

    def close(self) -> None:
        if self._ha is not None and self._ha.poll() is None:
            # The whole group: a running handler must not start another HAProxy after this.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._ha.pid, signal.SIGKILL)
            self._ha.wait()
        for node in self.nodes.values():
            for process in (node.agent, node.app):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        self.nodes.clear()
        # Daemonized HAProxy processes are not our children: end them by pid, then make sure.
        for pid in self.haproxy_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.haproxy_pids(), "this run's HAProxy processes to exit", timeout=5)
        if self._socket_dir != self.dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


@contextlib.contextmanager
def lab_running(serf: str, directory: Path) -> Iterator[Lab]:
    lab = Lab(serf, directory)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def crash_batch(lab: Lab, victims: list[WebNode], bystanders: list[WebNode]) -> dict[str, float]:
    """kill -9 of every victim at once; each one's time until the running HAProxy lacks its server."""
    wanted = {node.name for node in victims + bystanders}
    wait_until(lambda: wanted <= (lab.servers() or set()), "the nodes to be in HAProxy", timeout=TIMEOUT)
    # Every agent must know every victim as alive, or it would neither probe nor confirm it.
    names = [node.name for node in victims]
    for node in bystanders:
        wait_until(functools.partial(lab.sees_alive, node.rpc, names), f"{node.name} to see the victims")
    killed = {}
    for node in victims:
        killed[node.name] = time.perf_counter()
        lab.crash(node)
    out: dict[str, float] = {}
    deadline = time.perf_counter() + TIMEOUT
    while len(out) < len(killed):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"still in HAProxy {TIMEOUT:.0f} s after kill -9: {sorted(set(killed) - set(out))}")
        servers = lab.servers()
        now = time.perf_counter()
        if servers is not None:
            out |= {name: now - at for name, at in killed.items() if name not in servers and name not in out}
        time.sleep(STATS_EVERY)
    return out


def crashes(lab: Lab, count: int, log: Callable[[str], None]) -> list[float]:
    """kill -9 → server gone from the running HAProxy, CRASH_BATCH nodes at a time among bystanders."""
    if count <= 0:
        return []
    bystanders = [lab.add_web(f"stay-{i}") for i in range(BYSTANDERS)]
    samples: list[float] = []
    while len(samples) < count:
        size = min(CRASH_BATCH, count - len(samples))
        victims = [lab.add_web(f"crash-{len(samples) + i:02d}") for i in range(size)]
        for node in victims + [node for node in bystanders if node.agent is None]:
            lab.wait_ready(node)
            lab.join(node)
        for name, seconds in crash_batch(lab, victims, bystanders).items():
            samples.append(seconds)
            log(f"  serf crash {len(samples)}/{count}: {name} out of HAProxy {seconds:.2f} s after kill -9")
        for node in victims:
            lab.remove(node)
    # Joins and leaves are measured on an empty cluster: the bystanders leave (not measured).
    for leaving in [lab.leave(node) for node in bystanders]:
        leaving.wait(30)
    for node in bystanders:
        lab.remove(node)
    return samples


def join_one(lab: Lab, node: WebNode) -> float:
    """Agent start → first request served by it; it is the only web node, its app already up."""
    wait_until(lambda: lab.servers() == set(), "HAProxy to have no servers", timeout=TIMEOUT)
    started = time.perf_counter()
    lab.join(node)
    served = first_time(lambda: tag_of(lab.frontend, timeout=0.5) == node.name, timeout=TIMEOUT)
    if served is None:
        raise RuntimeError(f"{node.name} never served a request through HAProxy")
    return served - started


def leave_one(lab: Lab, node: WebNode) -> float:
    """`serf leave` → the last request served by it (its web app keeps running throughout)."""
    with LastSeen(lab.frontend) as seen:
        time.sleep(0.02)  # the poller runs before the change
        started = time.perf_counter()
        leaving = lab.leave(node)
        if first_time(lambda: lab.lacks(node.name), timeout=TIMEOUT, every=STATS_EVERY) is None:
            raise RuntimeError(f"{node.name} still in HAProxy {TIMEOUT:.0f} s after serf leave")
        time.sleep(TAIL)
    leaving.wait(30)
    return max(0.0, seen.last.get(node.name, started) - started)


def joins_and_leaves(lab: Lab, joins: int, leaves: int, log: Callable[[str], None]) -> tuple[list[float], list[float]]:
    """One lone web node at a time: its join, then its graceful leave (which empties the pool again)."""
    joined: list[float] = []
    left: list[float] = []
    rounds = max(joins, leaves)
    for i in range(rounds):
        node = lab.add_web(f"web-{i:02d}")
        lab.wait_ready(node)
        join = join_one(lab, node)
        time.sleep(0.15)  # a lone change, as in the project's measurements
        leave = leave_one(lab, node)
        lab.remove(node)
        if i < joins:
            joined.append(join)
        if i < leaves:
            left.append(leave)
        log(f"  serf join/leave {i + 1}/{rounds}: join {join:.2f} s, leave {leave:.2f} s")
    return joined, left


def measure_serf(iterations: dict[str, int], workdir: Path,
                 log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Latencies in seconds: "join", "leave", "crash" (see the module docstring)."""
    serf = ensure_serf(log)
    if shutil.which("haproxy") is None:
        raise RuntimeError("haproxy is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    with lab_running(serf, Path(tempfile.mkdtemp(prefix="run-", dir=workdir))) as lab:
        # Crashes first, on a fresh cluster: nodes that left recently would still count as members
        # for memberlist's suspicion timeout (log10 of the member count).
        crash = crashes(lab, iterations.get("crash", 0), log)
        join, leave = joins_and_leaves(lab, iterations.get("join", 0), iterations.get("leave", 0), log)
    return {"join": join, "leave": leave, "crash": crash}


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so that every process of the run is ended.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="serf-bench-"))
    try:
        results = measure_serf({"join": 5, "leave": 5, "crash": 3}, workdir)
    except BaseException:
        print(f"failed: logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir)
    for key, samples in results.items():
        print(f"{key:5}  n={len(samples):2}  p50 {statistics.median(samples):.3f} s  max {max(samples):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
