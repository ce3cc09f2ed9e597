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
  DOWN earlier, but the membership system is what is measured). A lone crash in a cluster like
  the lab's: ha, two live web nodes (s1, s2) and the victim; several such clusters side by side.

Serf runs with its defaults, as in the lab (none is tuned here); they explain the figures:
- agent: member events are coalesced until 1 s passes without a new one (QuiescentPeriod), 3 s
  at most (CoalescePeriod), before the handler runs. Every figure includes that 1 s.
- join (≈ 1.0 s): the joining agent syncs state with ha over TCP at once; ha's member-join is
  immediate, then the 1 s of coalescing.
- leave (≈ 2 s): gossip goes out every 200 ms (GossipInterval). The leaving agent first
  gossips its leave intent until it was retransmitted RetransmitMult 4 × ⌈log10(members + 1)⌉
  times (≈ 0.8 s here); only then memberlist's own leave message, which ha turns into
  member-leave (≈ 1 s after `serf leave`); then the 1 s of coalescing.
- crash (≈ 7 s): each member probes one other in turn every 1 s (ProbeInterval), 500 ms timeout
  (ProbeTimeout), then indirect probes through 3 others; a failed probe makes the victim a
  suspect, declared failed after SuspicionMult 4 × ProbeInterval × max(1, log10 members) = 4 s.
  From 4 members on, that 4 s needs 2 other members confirming the suspicion; without them the
  timeout starts at SuspicionMaxTimeoutMult 6 × 4 s and shrinks as confirmations come, hence
  the live bystanders. Then the 1 s of coalescing.
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
from discovery.haproxy.errors import HAProxyError
from discovery.haproxy.sockets import RuntimeAPI
from tests.support import get_json, stop_process, wait_until

HERE = Path(__file__).resolve().parent / "baselines" / "serf"
HANDLER = HERE / "handler.sh"
TEMPLATE = HERE / "haproxy.cfg.tmpl"
BACKEND = "nodes"  # the backend in haproxy.cfg.tmpl (the lab's name)

BYSTANDERS = 2  # live web nodes beside a crashing one, like the lab's s1 and s2: they probe and confirm too
CRASH_CLUSTERS = 3  # independent clusters, one lone crash each at a time
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


_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Loopback ports free for TCP and UDP (Serf gossips on both), never handed out before: an
    agent binds its ports only when it starts, long after they were chosen."""
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
                if port not in _HANDED_OUT:
                    ports.append(port)
    finally:
        for sock in held:
            sock.close()
    _HANDED_OUT.update(ports)
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
        self.frontend, self._ha_gossip, self.ha_rpc = free_ports(3)
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
            "-rpc-addr", f"127.0.0.1:{self.ha_rpc}", "-tag", "role=balancer",
            "-event-handler", f"member-join={handler}",
            "-event-handler", f"member-leave,member-failed={handler}",
        ], env=env, session=True)
        wait_until(lambda: self.members(self.ha_rpc).get("ha") == "alive", "the ha Serf agent")

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None,
               session: bool = False) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("ab") as sink:
            # From the repository: the demo web app (demo/) is not an installed package.
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=session, cwd=HERE.parents[2])

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
        app = self._spawn(f"{name}.app", [sys.executable, "-m", "demo.webapp", "--host", "127.0.0.1",
                                          "--port", str(port), "--tag", name])
        node = self.nodes[name] = WebNode(name, port, gossip, rpc, app)
        return node

    def wait_ready(self, node: WebNode) -> None:
        wait_until(lambda: get_json(node.port, "/health", timeout=0.5)["status"] == "ok", f"web app {node.name}")

    def join(self, node: WebNode, also: tuple[WebNode, ...] = ()) -> None:
        """Starts the node's agent, joining ha as in the lab (and the `also` nodes: see crashes())."""
        joins = [f"-join=127.0.0.1:{port}" for port in [self._ha_gossip, *(other.gossip for other in also)]]
        node.agent = self._spawn(f"{node.name}.serf", [
            self.serf, "agent", "-node", node.name, "-bind", f"127.0.0.1:{node.gossip}",
            "-rpc-addr", f"127.0.0.1:{node.rpc}", "-tag", "role=backend", "-tag", f"port={node.port}", *joins,
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
        try:
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
        finally:
            self._end_haproxy()

    def _end_haproxy(self) -> None:
        # Daemonized HAProxy processes are not our children: end them by pid, then make sure.
        killed = self.haproxy_pids()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._socket_dir != self.dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        wait_until(lambda: not self.haproxy_pids(), "this run's HAProxy processes to exit", timeout=5)
        # init reaps them within seconds; wait for it, so that `pgrep haproxy` afterwards finds
        # no zombie of ours either (best effort: they are dead already).
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not any(Path("/proc", str(pid)).exists() for pid in killed), "init to reap HAProxy",
                       timeout=10)


@contextlib.contextmanager
def lab_running(serf: str, directory: Path) -> Iterator[Lab]:
    lab = Lab(serf, directory)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def prepare_crash(lab: Lab, victim: WebNode, bystanders: list[WebNode]) -> None:
    """The victim and the bystanders are in HAProxy, and every live agent knows them all as alive
    (an agent that does not know the victim neither probes it nor confirms its suspicion)."""
    names = [node.name for node in [victim, *bystanders]]
    wait_until(lambda: set(names) <= (lab.servers() or set()), "the nodes to be in HAProxy", timeout=TIMEOUT)
    for name, rpc in [("ha", lab.ha_rpc), *((node.name, node.rpc) for node in bystanders)]:
        wait_until(functools.partial(lab.sees_alive, rpc, names), f"{name} to see every node alive", timeout=TIMEOUT)


def crash_round(victims: list[tuple[Lab, WebNode]]) -> list[tuple[str, float]]:
    """kill -9 of one victim per cluster; each one's time until its HAProxy lacks its server."""
    killed = []
    for lab, node in victims:
        killed.append((lab, node, time.perf_counter()))
        lab.crash(node)
    out: list[tuple[str, float]] = []
    deadline = time.perf_counter() + TIMEOUT
    while killed:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"still in HAProxy {TIMEOUT:.0f} s after kill -9: {[n.name for _, n, _ in killed]}")
        for lab, node, at in list(killed):
            if lab.lacks(node.name):
                out.append((node.name, time.perf_counter() - at))
                killed.remove((lab, node, at))
        time.sleep(STATS_EVERY)
    return out


def crashes(serf: str, workdir: Path, count: int, log: Callable[[str], None]) -> list[float]:
    """kill -9 → server gone from the running HAProxy. Each crash is a lone one in a cluster like
    the lab's (ha, s1, s2 and one more web node); CRASH_CLUSTERS independent clusters run side by
    side so that several are timed at once. Crashing several nodes of one cluster together
    would not do: each victim gets fewer confirmations, and the failures are detected and handled
    one after the other (measured: 8-17 s for 3 at once instead of about 7 s)."""
    if count <= 0:
        return []
    samples: list[float] = []
    with contextlib.ExitStack() as stack:
        labs = [stack.enter_context(lab_running(serf, Path(tempfile.mkdtemp(prefix=f"crash{c}-", dir=workdir))))
                for c in range(min(CRASH_CLUSTERS, count))]
        bystanders = {lab: [lab.add_web(f"stay-{i}") for i in range(BYSTANDERS)] for lab in labs}
        for lab in labs:
            for node in bystanders[lab]:
                lab.wait_ready(node)
                lab.join(node)
        while len(samples) < count:
            victims = [(lab, lab.add_web(f"crash-{len(samples) + c:02d}"))
                       for c, lab in enumerate(labs[:count - len(samples)])]
            for lab, node in victims:
                lab.wait_ready(node)
                # Through the bystanders too (setup, not measured): joining ha alone, the news
                # sometimes missed a bystander for up to the 30 s push/pull interval, since gossip
                # retransmits it only 4 times and recently failed members still draw their share.
                lab.join(node, also=tuple(bystanders[lab]))
            for lab, node in victims:
                prepare_crash(lab, node, bystanders[lab])
            for name, seconds in crash_round(victims):
                samples.append(seconds)
                log(f"  serf crash {len(samples)}/{count}: {name} out of HAProxy {seconds:.2f} s after kill -9")
            for lab, node in victims:
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
    crash = crashes(serf, workdir, iterations.get("crash", 0), log)
    with lab_running(serf, Path(tempfile.mkdtemp(prefix="join-", dir=workdir))) as lab:
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
