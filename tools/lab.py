"""The seed lab, regenerated: drive the real compose stack through the lab's scenario and keep,
for each step, what the lab asked its students to hand in.

    python -m tools.lab                # from the repository root; writes report/logs/<step>/

Start with two web apps, add nodes one by one up to five, stop one gracefully, kill one, scale
down. After each step it waits until Docker, Consul, the rendered haproxy.cfg and the stats page
all agree on the running web apps, then writes: `docker ps`, `docker inspect` and `docker logs`
of every container, the rendered `haproxy.cfg`, the Consul catalog (the lab's `/nodes` folder),
the watcher's change log (the lab's `serf.log`), requests sent through HAProxy, and screenshots
of the stats page and the Consul UI (headless Chromium, `tools.screenshot`). The stack runs
under its own compose project on loopback ports of your choice (any free ones by default), and
is always taken down at the end.

The scenario and the checks on what it wrote are plain data and functions (tested without
Docker); the `Lab` class is the IO around them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discovery.cli import EnvParser, positive_seconds
from tools.screenshot import png_size

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

SERVICES = ("consul", "socket-proxy", "registrator", "ha", "webapp")
SCREENSHOT_IMAGE = "discovery/screenshot:dev"
RENDERED = "/etc/haproxy/haproxy.cfg"
STATS_USER = "admin"
MIN_PNG = (800, 400)  # a screenshot smaller than this lost its page


# --- the scenario (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    slug: str      # its folder under logs/
    title: str
    action: str    # up | scale | stop | kill
    webapps: int   # web apps running once the step has converged
    lab: str       # what it stands for in the seed lab

    def __post_init__(self) -> None:
        if self.action not in ("up", "scale", "stop", "kill"):
            raise ValueError(f"unknown action {self.action!r}")
        if not re.fullmatch(r"[0-9]{2}-[a-z0-9-]+", self.slug) or self.webapps < 0:
            raise ValueError(f"bad step {self.slug!r}")


SCENARIO = (
    Step("01-start-two", "Start with two web apps", "up", 2, "tasks 0-3: the stats page, s1 and s2"),
    Step("02-add-third", "Add a node: three web apps", "scale", 3, "tasks 5-6: add nodes one by one"),
    Step("03-add-fourth", "Add a node: four web apps", "scale", 4, "tasks 5-6: add nodes one by one"),
    Step("04-add-fifth", "Add a node: five web apps", "scale", 5, "tasks 5-6: add nodes one by one"),
    Step("05-stop-one", "Stop one gracefully (docker stop: SIGTERM)", "stop", 4, "task 5: stop a container"),
    Step("06-kill-one", "Kill one (docker kill: SIGKILL)", "kill", 3, "task 6: a crash"),
    Step("07-scale-down", "Scale down to two", "scale", 2, "task 6: shutting down nodes"),
)

# Written into every step's folder; logs/ and inspect/ hold one file per container.
STEP_FILES = ("step.json", "docker-ps.txt", "haproxy.cfg", "nodes.txt", "catalog.json", "watcher.log",
              "requests.txt", "stats.png", "consul-ui.png")


def server_name(container_id: str) -> str:
    """The HAProxy server of a web app container, as the registrator names its service ID."""
    return f"webapp-{container_id[:12]}"


def servers_in(config: str) -> list[str]:
    """Names on the `server` lines of a rendered config, in order (draining ones included)."""
    return re.findall(r"^\s*server\s+(\S+)\s", config, re.M)


def running_webapps_in(docker_ps: str) -> set[str]:
    """Server names of the running web apps in a `docker ps` table (the lab's own evidence)."""
    # By name, not image: the image column shows an ID once its tag has moved to a newer build.
    return {server_name(cid) for cid in re.findall(r"^([0-9a-f]{12})\s.*\sUp\s.*\s\S+-webapp-[0-9]+\s*$", docker_ps,
                                                   re.M)}


def short_name(container: str, project: str) -> str:
    """`discovery-lab-webapp-3` → `webapp-3`: file names that read the same in every run."""
    return container.lstrip("/").removeprefix(f"{project}-")


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def nodes_listing(health: list[dict[str, Any]]) -> str:
    """One line per instance of Consul's `/v1/health/service/<name>` answer: what the lab's
    `ls /nodes` showed, plus the address and the aggregated check status."""
    lines = []
    for entry in sorted(health, key=lambda e: e["Service"]["ID"]):
        statuses = {check["Status"] for check in entry.get("Checks", [])}
        status = next((s for s in ("critical", "warning") if s in statuses), "passing")
        service = entry["Service"]
        lines.append(f"{service['ID']}  {service['Address']}:{service['Port']}  {status}  node={entry['Node']['Node']}")
    return "\n".join(lines) + "\n" if lines else "(no instances)\n"


def watcher_lines(log: str) -> str:
    """The watcher's own lines from the `ha` container's log (HAProxy's are left out)."""
    return "".join(line for line in log.splitlines(keepends=True)
                   if re.match(r"\S+ \S+ [A-Z]+ +discovery\.", line))


def publish(port: int) -> str:
    """A compose publish address on loopback; port 0 lets Docker pick a free one."""
    return f"127.0.0.1:{port}" if port else "127.0.0.1:"


def index_markdown(records: list[dict[str, Any]]) -> str:
    lines = ["# The lab's steps, as run by `python -m tools.lab`", "",
             f"Run {records[0]['started'] if records else ''}; one folder per step. Each holds `docker-ps.txt`, "
             "`inspect/` and `logs/` (one file per container), `haproxy.cfg`, `nodes.txt` and `catalog.json` "
             "(Consul), `watcher.log`, `requests.txt`, `stats.png` and `consul-ui.png`.", "",
             "| step | what | web apps | servers in haproxy.cfg | converged after | stats page |",
             "|---|---|---:|---|---:|---|"]
    for r in records:
        servers = ", ".join(f"`{s}`" for s in r["servers"]) or "none"
        lines.append(f"| [{r['slug']}]({r['slug']}/) | {r['title']} | {r['webapps']} | {servers} | "
                     f"{r['converged_after_s']:.1f} s | [png]({r['slug']}/stats.png) |")
    lines += ["", "“Converged after” is measured from the end of the step's Docker command until Docker, Consul, "
              "haproxy.cfg and the stats page all listed the same web apps (polled every 0.2 s)."]
    return "\n".join(lines) + "\n"


def check_report(root: Path, steps: Iterable[Step] = SCENARIO) -> list[str]:
    """What is missing or wrong in a generated report (`root` holds `logs/`); empty when complete."""
    problems: list[str] = []
    if not (root / "logs" / "README.md").is_file():
        problems.append("logs/README.md missing")
    for step in steps:
        folder = root / "logs" / step.slug
        for name in STEP_FILES:
            path = folder / name
            if not path.is_file() or path.stat().st_size < 20:
                problems.append(f"{step.slug}/{name}: missing or empty")
        for name in ("stats.png", "consul-ui.png"):
            try:
                width, height = png_size((folder / name).read_bytes())
                if width < MIN_PNG[0] or height < MIN_PNG[1]:
                    problems.append(f"{step.slug}/{name}: {width}x{height} is too small")
            except (OSError, ValueError) as error:
                problems.append(f"{step.slug}/{name}: {error}")
        try:
            docker_ps = (folder / "docker-ps.txt").read_text()
            servers = servers_in((folder / "haproxy.cfg").read_text())
            meta = json.loads((folder / "step.json").read_text())
            nodes = (folder / "nodes.txt").read_text()
        except (OSError, ValueError) as error:
            problems.append(f"{step.slug}: {error}")
            continue
        running = running_webapps_in(docker_ps)
        if len(servers) != step.webapps or set(servers) != running or len(set(servers)) != len(servers):
            problems.append(f"{step.slug}/haproxy.cfg lists {sorted(servers)}, docker ps runs {sorted(running)}")
        if set(meta.get("servers", [])) != running:
            problems.append(f"{step.slug}/step.json disagrees with docker-ps.txt")
        if set(re.findall(r"^(webapp-[0-9a-f]{12})\s.*\spassing\s", nodes, re.M)) != running:
            problems.append(f"{step.slug}/nodes.txt disagrees with docker-ps.txt")
        for kind in ("logs", "inspect"):
            files = {re.sub(r"-[0-9]+$", "", p.stem) for p in (folder / kind).glob("*") if p.stat().st_size >= 20}
            missing = [s for s in SERVICES if s not in files]
            if missing:
                problems.append(f"{step.slug}/{kind}/: nothing for {', '.join(missing)}")
    return problems


# --- the run (IO) ------------------------------------------------------------------------------


class LabError(Exception):
    """A step that could not be done or did not converge: the run stops, the stack is removed."""


@dataclass(frozen=True)
class LabConfig:
    output: Path
    project: str
    http_port: int
    stats_port: int
    consul_port: int
    converge_timeout: float
    root: Path  # where compose.yaml is


class Lab:
    def __init__(self, config: LabConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self.say = say
        self.secrets: list[str] = []
        self.token = ""
        self.ports: dict[str, int] = {}
        self.env = {"HA_HTTP_PUBLISH": publish(config.http_port), "HA_STATS_PUBLISH": publish(config.stats_port),
                    "CONSUL_PUBLISH": publish(config.consul_port)}

    # -- commands

    def docker(self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
        # The user's environment (CONSUL_IMAGE, DOCKER_HOST) plus our ports.
        result = subprocess.run(["docker", *args], cwd=self.config.root, env={**os.environ, **self.env}, text=True,
                                capture_output=True, timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            raise LabError(f"`docker {' '.join(args)}` failed ({result.returncode}):\n{result.stderr.strip()}")
        return result

    def compose(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # -f as well as -p: with -p alone, `down` fails once the exited one-shots are gone (compose#11686).
        return self.docker("compose", "-f", "compose.yaml", "-p", self.config.project, *args, check=check,
                           timeout=timeout)

    def containers(self, service: str | None = None, running: bool = False) -> list[str]:
        """Full IDs of the project's containers (of one service), oldest name first."""
        filters = ["--filter", f"label=com.docker.compose.project={self.config.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        out = self.docker("ps", "--no-trunc", "--format", "{{.Names}} {{.ID}}", *([] if running else ["-a"]),
                          *filters).stdout
        return [cid for _, cid in sorted(line.split() for line in out.splitlines() if line.strip())]

    def http(self, port_of: str, path: str, headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports[port_of]}{path}", headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bytes(answer.read())

    def stats_headers(self) -> dict[str, str]:
        basic = base64.b64encode(f"{STATS_USER}:{self.secrets[0]}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}

    def consul_headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    # -- the run

    def run(self) -> list[dict[str, Any]]:
        logs = self.config.output / "logs"
        shutil.rmtree(logs, ignore_errors=True)  # ours alone: regenerated completely
        logs.mkdir(parents=True)
        self.say("building the images (the stack's and the screenshot image)")
        self.docker("build", "-q", "-f", "images/Dockerfile", "--target", "screenshot", "-t", SCREENSHOT_IMAGE, ".",
                    timeout=1200)
        self.compose("build", "-q", timeout=1200)
        self.compose("down", "-v", "--remove-orphans", "-t", "1")  # a run interrupted before ours
        records = []
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        try:
            for number, step in enumerate(SCENARIO, 1):
                self.say(f"step {number}/{len(SCENARIO)} {step.slug}: {step.title}")
                began = time.monotonic()
                self.act(step)
                acted = time.monotonic()
                servers = self.converge(step)
                record = {"slug": step.slug, "title": step.title, "lab": step.lab, "action": step.action,
                          "webapps": step.webapps, "servers": sorted(servers), "started": started,
                          "action_s": round(acted - began, 2), "converged_after_s": round(time.monotonic() - acted, 2)}
                self.say(f"  converged after {record['converged_after_s']:.1f} s: {len(servers)} web apps; collecting")
                collecting = time.monotonic()
                self.collect(step, record)
                self.say(f"  collected in {time.monotonic() - collecting:.1f} s")
                records.append(record)
        finally:
            self.say("taking the stack down")
            self.compose("down", "-v", "--remove-orphans", "-t", "2", check=False, timeout=300)
        (logs / "README.md").write_text(index_markdown(records))
        return records

    def act(self, step: Step) -> None:
        if step.action == "up":
            self.compose("up", "-d", "--wait", timeout=600)
            self.ports = {name: int(self.compose("port", service, port).stdout.strip().rpartition(":")[2])
                          for name, service, port in (("http", "ha", "80"), ("stats", "ha", "1936"),
                                                      ("consul", "consul", "8500"))}
            # The password the `ha` container generated at its first start (0600, root only), and the
            # read-only Consul token when ACLs are on (CONSUL_HTTP_TOKEN_FILE in `ha`).
            self.secrets = [self.compose("exec", "-T", "ha", "cat", "/etc/haproxy/stats-password").stdout.strip()]
            read_token = 'f="${CONSUL_HTTP_TOKEN_FILE:-}"; if [ -n "$f" ] && [ -r "$f" ]; then cat "$f"; fi'
            self.token = self.compose("exec", "-T", "ha", "sh", "-c", read_token).stdout.strip()
            self.secrets.append(self.token)
        elif step.action == "scale":
            self.compose("rm", "-f", "webapp")  # stopped ones, so that --scale counts live ones only
            self.compose("up", "-d", "--no-recreate", "--wait", "--scale", f"webapp={step.webapps}", "webapp",
                         timeout=300)
        else:
            victim = self.containers("webapp", running=True)[0]
            self.docker(step.action, victim, timeout=60)

    def converge(self, step: Step) -> set[str]:
        """Wait until Docker, HAProxy's file and stats page, and Consul agree on `step.webapps` web apps."""
        deadline = time.monotonic() + self.config.converge_timeout
        last = "nothing yet"
        while time.monotonic() < deadline:
            try:
                running = {server_name(cid) for cid in self.containers("webapp", running=True)}
                rendered = servers_in(self.compose("exec", "-T", "ha", "cat", RENDERED).stdout)
                csv = self.http("stats", "/;csv", self.stats_headers()).decode()
                stats = set(re.findall(r"webapp-[0-9a-f]{12}", csv))
                health = json.loads(self.http("consul", "/v1/health/service/webapp?passing", self.consul_headers()))
                passing = {entry["Service"]["ID"] for entry in health}
                last = f"docker {len(running)}, haproxy.cfg {len(rendered)}, stats {len(stats)}, consul {len(passing)}"
                if len(running) == step.webapps and running == set(rendered) == stats == passing:
                    return running
            except (LabError, OSError, ValueError) as error:
                last = str(error)
            time.sleep(0.2)
        raise LabError(f"{step.slug}: no agreement on {step.webapps} web apps after "
                       f"{self.config.converge_timeout:.0f} s (last seen: {last})")

    def collect(self, step: Step, record: dict[str, Any]) -> None:
        folder = self.config.output / "logs" / step.slug
        (folder / "logs").mkdir(parents=True)
        (folder / "inspect").mkdir()

        def write(name: str, text: str) -> None:
            (folder / name).write_text(redact(text, self.secrets))

        def container_log(cid: str) -> str:
            log = self.docker("logs", cid)
            return log.stdout + log.stderr  # the stack logs to both streams; order is kept within each

        # Chromium and `docker logs` are the slow parts on a busy machine: run them side by side.
        with ThreadPoolExecutor(max_workers=4) as pool:
            pictures = pool.submit(self.screenshots)
            ids = self.containers()
            logs = dict(zip(ids, pool.map(container_log, ids), strict=True))
            write("step.json", json.dumps(record, indent=2) + "\n")
            write("docker-ps.txt", self.docker("ps", "-a", "--filter",
                                               f"label=com.docker.compose.project={self.config.project}").stdout)
            ha_log = ""
            for inspect in json.loads(self.docker("inspect", *ids).stdout):
                name = short_name(inspect["Name"], self.config.project)
                write(f"inspect/{name}.json", json.dumps([inspect], indent=2) + "\n")
                write(f"logs/{name}.log", logs[inspect["Id"]])
                if inspect["Config"]["Labels"].get("com.docker.compose.service") == "ha":
                    ha_log = logs[inspect["Id"]]
            write("haproxy.cfg", self.compose("exec", "-T", "ha", "cat", RENDERED).stdout)
            health = json.loads(self.http("consul", "/v1/health/service/webapp", self.consul_headers()))
            services = json.loads(self.http("consul", "/v1/catalog/services", self.consul_headers()))
            write("nodes.txt", nodes_listing(health))
            write("catalog.json", json.dumps({"catalog/services": services, "health/service/webapp": health},
                                             indent=2) + "\n")
            write("watcher.log", watcher_lines(ha_log))
            write("requests.txt", self.requests(2 * step.webapps))
            for name, png in pictures.result().items():
                (folder / name).write_bytes(png)

    def requests(self, count: int) -> str:
        """`count` GETs through HAProxy: round robin over the step's web apps, as the lab's curl showed."""
        lines = [f"GET http://127.0.0.1:<http port>/ x{count}, one connection each"]
        for _ in range(count):
            try:
                body = json.loads(self.http("http", "/"))
                lines.append(f"200 host={body['host']} ip={body['ip']}")
            except urllib.error.HTTPError as error:
                lines.append(f"{error.code}")
        return "\n".join(lines) + "\n"

    def screenshots(self) -> dict[str, bytes]:
        job = {"shots": [
            {"name": "stats", "url": "http://ha:1936/", "headers": self.stats_headers(), "width": 1280,
             "height": 900, "wait_ms": 1000},
            {"name": "consul", "url": "http://consul:8500/ui/dc1/services/webapp/instances",
             "headers": self.consul_headers(), "width": 1280, "height": 800, "wait_ms": 5000, "no_long_polls": True},
        ]}
        # On the compose network: Chromium reaches ha:1936 and consul:8500 as the stack's own
        # containers do, whatever is published on the host. Secrets travel on stdin.
        result = self.docker("run", "--rm", "-i", "--network", f"{self.config.project}_default", SCREENSHOT_IMAGE,
                             stdin=json.dumps(job), timeout=180)
        pictures = json.loads(result.stdout)
        return {"stats.png": base64.b64decode(pictures["stats"]), "consul-ui.png": base64.b64decode(pictures["consul"])}


# --- CLI ---------------------------------------------------------------------------------------


def project_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", text):
        raise ValueError(f"{text!r}: a compose project name is lowercase letters, digits, '-' and '_'")
    return text


def port(text: str) -> int:
    number = int(text)
    if not 0 <= number < 65536:
        raise ValueError(f"{text!r} is not a port (0 = any free one)")
    return number


def build_parser(environ: Mapping[str, str]) -> EnvParser:
    parser = EnvParser(environ=environ, prog="python -m tools.lab", description=(
        "Drive the real compose stack through the seed lab's scenario and write report/logs/<step>/.\n\n"
        "Exit codes: 0 the report is complete; 1 a step failed or a file came out wrong (the stack is "
        "removed either way); 2 bad flag, or Docker / Compose v2 missing."))
    parser.option("--output", env="DISCOVERY_LAB_OUTPUT", default="report", help="report folder (logs/ is replaced)")
    parser.option("--project", env="DISCOVERY_LAB_PROJECT", default="discovery-lab", type=project_name,
                  help="compose project name, apart from the stack you may run yourself")
    parser.option("--http-port", env="DISCOVERY_LAB_HTTP_PORT", default=0, type=port,
                  help="loopback port for traffic (0: any free one)")
    parser.option("--stats-port", env="DISCOVERY_LAB_STATS_PORT", default=0, type=port,
                  help="loopback port for the stats page (0: any free one)")
    parser.option("--consul-port", env="DISCOVERY_LAB_CONSUL_PORT", default=0, type=port,
                  help="loopback port for Consul's API and UI (0: any free one)")
    parser.option("--converge-timeout", env="DISCOVERY_LAB_CONVERGE_TIMEOUT", default=60.0, type=positive_seconds,
                  help="seconds a step may take to show in Docker, Consul and HAProxy alike")
    return parser


def parse(argv: list[str] | None, environ: Mapping[str, str]) -> LabConfig:
    args = build_parser(environ).parse_args(argv)
    return LabConfig(output=Path(args.output).resolve(), project=args.project, http_port=args.http_port,
                     stats_port=args.stats_port, consul_port=args.consul_port,
                     converge_timeout=args.converge_timeout, root=Path.cwd())


def prerequisites(root: Path) -> str | None:
    """Why the lab cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed: the lab drives the real compose stack (Docker with Compose v2)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "the Docker daemon does not answer (`docker info` failed): start it, or check DOCKER_HOST"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return "`docker compose` (Compose v2) is missing"
    if not (root / "compose.yaml").is_file():
        return f"no compose.yaml in {root}: run the lab from the repository root"
    return None


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, through the `finally` that takes the stack down."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    config = parse(argv, os.environ)
    problem = prerequisites(config.root)
    if problem:
        print(f"lab: {problem}", file=sys.stderr)
        return EXIT_USAGE
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[lab {time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, interrupt)
    try:
        Lab(config, say).run()
    except LabError as error:
        say(f"failed: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_FAILED
    problems = check_report(config.output)
    for problem in problems:
        say(f"incomplete: {problem}")
    if problems:
        return EXIT_FAILED
    say(f"done: {config.output / 'logs'} (index: logs/README.md)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
