"""Several Docker hosts on this one machine, for trying and testing a multi-host deployment
(ADR 0010, issue 13): each simulated host is a network namespace with its own address on a
bridge this tool creates, and its own Docker engine (data root, exec root, socket, pid file and
bridge subnet of its own), so that published ports, NAT and each host's Docker events are real.

    python -m tools.cluster up --hosts 3      # namespaces, bridge, one dockerd each, images loaded
    python -m tools.cluster status            # what runs, one line a host
    python -m tools.cluster down              # everything it made, gone (also after a failed up)

Needs root, `ip`, `nsenter` and `dockerd` (`../shared/env/provision`). The engines are entered
with `nsenter --net=`, not `ip netns exec`: the latter remounts /sys and dockerd then fails
("Devices cgroup isn't mounted"). What `up` creates is written down as it goes
(`/run/discovery-cluster/state.json`), so that `down` removes exactly that, even when `up`
stopped half-way; `down` with nothing recorded does nothing. Traffic goes only to the addresses
of the namespaces and containers made here.

The layout (names, addresses, subnets, paths) is a pure function of the host count (`layout`);
the `Cluster` class is the IO around it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PREFIX = "dsc"  # every interface, namespace and path made here starts with it
STATE_DIR = Path("/run/discovery-cluster")
DATA_DIR = Path("/var/lib/discovery-cluster")
NETWORK = "10.213.0"  # the simulated hosts' LAN: .1 is this machine, .11 on the hosts
MAX_HOSTS = 20
DEFAULT_IMAGES = ("hashicorp/consul:1.8.7",)


# --- the layout (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One simulated Docker host."""

    name: str  # h1, h2, ...
    netns: str
    veth: str  # its end of the link, in this machine's namespace (the other is eth0 inside)
    address: str  # on the simulated LAN
    docker_subnet: str  # its engine's default bridge (--bip): private, distinct per host, like real hosts
    data_root: str
    exec_root: str
    socket: str
    pidfile: str
    log: str

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"


@dataclass(frozen=True)
class Layout:
    bridge: str
    gateway: str  # this machine's address on the LAN
    prefix_length: int
    hosts: tuple[Host, ...]


def layout(count: int) -> Layout:
    """The names, addresses and paths of `count` hosts: the same count gives the same layout."""
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"--hosts: want 1 to {MAX_HOSTS}, not {count}")
    hosts = []
    for i in range(1, count + 1):
        name = f"h{i}"
        run = STATE_DIR / name
        hosts.append(Host(
            name=name, netns=f"{PREFIX}-{name}", veth=f"{PREFIX}-{name}", address=f"{NETWORK}.{10 + i}",
            docker_subnet=f"10.214.{i}.1/24", data_root=str(DATA_DIR / name), exec_root=str(run / "exec"),
            socket=str(run / "docker.sock"), pidfile=str(run / "docker.pid"), log=str(run / "dockerd.log"),
        ))
    return Layout(bridge=f"{PREFIX}-br0", gateway=f"{NETWORK}.1", prefix_length=24, hosts=tuple(hosts))


def dockerd_command(host: Host) -> list[str]:
    """Its engine, in its namespace, with nothing shared with this machine's engine."""
    return ["nsenter", f"--net=/run/netns/{host.netns}", "dockerd", "--data-root", host.data_root,
            "--exec-root", host.exec_root, "-H", host.docker_host, "--pidfile", host.pidfile,
            "--bip", host.docker_subnet]


# --- the IO ------------------------------------------------------------------------------------


class ClusterError(RuntimeError):
    pass


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ClusterError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Record:
    """What `up` has made so far, saved after every step: `down` undoes exactly that."""

    layout: Layout
    hosts: list[str]  # the hosts whose namespace exists
    bridge: bool = False
    forward_rule: bool = False

    @classmethod
    def load(cls, path: Path) -> Record | None:
        try:
            data = json.loads(path.read_text())
            plan = data["layout"]
            hosts = tuple(Host(**host) for host in plan.pop("hosts"))
            return cls(Layout(**plan, hosts=hosts), data["hosts"], data["bridge"], data["forward_rule"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            raise ClusterError(f"{path} is not a record of this tool ({error}): remove it, and what it made, "
                               "by hand") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


ALREADY_GONE = ("Cannot find", "No such", "does a matching rule exist")


def _undo(*command: str) -> list[str]:
    """Run a removal; what went wrong, unless what it removes is gone already."""
    done = _run(*command, check=False)
    if done.returncode == 0 or any(gone in done.stderr for gone in ALREADY_GONE):
        return []
    return [f"{' '.join(command)}: {done.stderr.strip()}"]


class Cluster:
    def __init__(self, state_dir: Path = STATE_DIR, say: Callable[[str], None] = print) -> None:
        self.state_file = state_dir / "state.json"
        self.say = say
        self.record: Record | None = Record.load(self.state_file)

    def _saved(self, **changes: object) -> None:
        assert self.record is not None
        for key, value in changes.items():
            setattr(self.record, key, value)
        self.record.save(self.state_file)

    def up(self, count: int, images: Sequence[str]) -> Layout:
        """Make `count` hosts; on any failure, raise with what was made recorded (`down` removes it)."""
        for tool in ("ip", "nsenter", "dockerd", "docker", "iptables"):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} not found: run ../shared/env/provision")
        if os.geteuid() != 0:
            raise ClusterError("needs root: it creates network namespaces and Docker engines")
        plan = layout(count)
        self.record = Record(plan, [])
        self._saved()
        self._bridge(plan)
        for host in plan.hosts:
            self._host(plan, host)
        for host in plan.hosts:
            self._engine(host)
        for image in images:
            self._load(plan, image)
        return plan

    def _bridge(self, plan: Layout) -> None:
        _run("ip", "link", "add", plan.bridge, "type", "bridge")
        self._saved(bridge=True)
        _run("ip", "addr", "add", f"{plan.gateway}/{plan.prefix_length}", "dev", plan.bridge)
        _run("ip", "link", "set", plan.bridge, "up")
        # This machine's dockerd sets FORWARD to DROP, and bridged frames may pass iptables
        # (br_netfilter): let the simulated LAN talk to itself.
        _run("iptables", "-I", "FORWARD", "-i", plan.bridge, "-o", plan.bridge, "-j", "ACCEPT")
        self._saved(forward_rule=True)

    def _host(self, plan: Layout, host: Host) -> None:
        self.say(f"[cluster] {host.name}: namespace {host.netns}, {host.address}")
        _run("ip", "netns", "add", host.netns)
        assert self.record is not None
        self._saved(hosts=[*self.record.hosts, host.name])
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", f"{host.veth}-in")
        _run("ip", "link", "set", f"{host.veth}-in", "netns", host.netns)
        _run("ip", "link", "set", host.veth, "master", plan.bridge, "up")
        inside = ("ip", "-n", host.netns)
        _run(*inside, "link", "set", f"{host.veth}-in", "name", "eth0")
        _run(*inside, "addr", "add", f"{host.address}/{plan.prefix_length}", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        _run(*inside, "route", "add", "default", "via", plan.gateway)

    def _engine(self, host: Host) -> None:
        self.say(f"[cluster] {host.name}: dockerd ({host.socket})")
        for path in (host.data_root, host.exec_root):
            Path(path).mkdir(parents=True, exist_ok=True)
        with open(host.log, "ab") as log:
            subprocess.Popen(dockerd_command(host), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _run("docker", "-H", host.docker_host, "info", "--format", "{{.ID}}", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise ClusterError(f"{host.name}: dockerd did not answer within 60 s (see {host.log})")

    def _load(self, plan: Layout, image: str) -> None:
        self.say(f"[cluster] loading {image} into {len(plan.hosts)} engine(s)")
        saved = subprocess.run(["docker", "save", image], capture_output=True)
        if saved.returncode != 0:
            raise ClusterError(f"docker save {image}: {saved.stderr.decode().strip()}")
        for host in plan.hosts:
            loaded = subprocess.run(["docker", "-H", host.docker_host, "load"], input=saved.stdout,
                                    capture_output=True)
            if loaded.returncode != 0:
                raise ClusterError(f"{host.name}: docker load {image}: {loaded.stderr.decode().strip()}")

    def down(self) -> list[str]:
        """Undo what was recorded, in reverse; go on past a failure and return what failed."""
        if self.record is None:
            return []
        plan, made = self.record.layout, self.record
        problems: list[str] = []
        for host in plan.hosts:
            if host.name not in made.hosts:
                continue
            problems += self._stop_engine(host)
            problems += _undo("ip", "link", "del", host.veth)
            problems += _undo("ip", "netns", "del", host.netns)
            shutil.rmtree(host.data_root, ignore_errors=True)
        if made.forward_rule:
            problems += _undo("iptables", "-D", "FORWARD", "-i", plan.bridge, "-o", plan.bridge, "-j", "ACCEPT")
        if made.bridge:
            problems += _undo("ip", "link", "del", plan.bridge)
        if not problems:
            shutil.rmtree(self.state_file.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                DATA_DIR.rmdir()  # only when empty: nothing of anybody else's goes
            self.record = None
        return problems

    def _stop_engine(self, host: Host) -> list[str]:
        try:
            pid = int(Path(host.pidfile).read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return []  # no pid file, or no such process any more
        if b"dockerd" not in command[0] or host.docker_host.encode() not in command:
            return []  # the pid is somebody else's now: never signal it
        # Containers first, so that their mounts and veths go with them; then the engine.
        ids = _run("docker", "-H", host.docker_host, "ps", "-aq", check=False).stdout.split()
        if ids:
            _run("docker", "-H", host.docker_host, "rm", "-f", *ids, check=False)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return []
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        return [f"{host.name}: dockerd {pid} did not stop within 30 s; killed"]

    def status(self) -> list[str]:
        if self.record is None:
            return ["no cluster (python -m tools.cluster up --hosts N)"]
        lines = []
        for host in self.record.layout.hosts:
            if host.name not in self.record.hosts:
                continue
            info = _run("docker", "-H", host.docker_host, "info", "--format",
                        "{{.ContainersRunning}} running, {{.Images}} images", check=False)
            engine = info.stdout.strip() if info.returncode == 0 else "engine not answering"
            lines.append(f"{host.name}  {host.address:<12}  {host.netns:<8}  DOCKER_HOST={host.docker_host}  {engine}")
        return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="make the simulated hosts, each with its own Docker engine")
    up.add_argument("--hosts", type=int, default=3, help=f"how many (1 to {MAX_HOSTS}; default 3)")
    up.add_argument("--image", action="append", default=None,
                    help=f"a local image to load into every engine (repeatable; default {', '.join(DEFAULT_IMAGES)})")
    commands.add_parser("down", help="remove everything `up` made")
    commands.add_parser("status", help="one line a host")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cluster = Cluster()
    try:
        if args.command == "up":
            if cluster.record is not None:
                print(f"[cluster] a cluster is up already ({cluster.state_file}): `down` first", file=sys.stderr)
                return EXIT_FAILED
            try:
                plan = cluster.up(args.hosts, args.image or DEFAULT_IMAGES)
            except (ClusterError, ValueError, OSError):
                for problem in cluster.down():  # never leave half a cluster behind
                    print(f"[cluster] while cleaning up: {problem}", file=sys.stderr)
                raise
            print("\n".join(cluster.status()))
            print(f"[cluster] up: {len(plan.hosts)} host(s) on {plan.bridge} ({NETWORK}.0/24); "
                  "`python -m tools.cluster down` removes them")
        elif args.command == "down":
            problems = cluster.down()
            for problem in problems:
                print(f"[cluster] {problem}", file=sys.stderr)
            return EXIT_FAILED if problems else EXIT_OK
        else:
            print("\n".join(cluster.status()))
    except ValueError as error:
        print(f"python -m tools.cluster: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ClusterError, OSError) as error:
        print(f"[cluster] failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
