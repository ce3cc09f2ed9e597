"""The real compose.yaml as a test fixture: one project, brought up, driven, and always torn down."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import free_port, require

ROOT = Path(__file__).resolve().parents[1]


class ComposeStack:
    """One compose project, published on free loopback ports (other stacks on this Docker host may
    hold 80, 1936 and 8500), with optional profiles (e.g. `cluster`)."""

    def __init__(self, project: str, profiles: tuple[str, ...] = ()) -> None:
        self.project = project
        self.profiles = profiles
        self.http, self.stats, self.consul = free_port(), free_port(), free_port()

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONSUL_IMAGE": os.environ.get("CONSUL_IMAGE", "hashicorp/consul:1.8.7"),
               "HA_HTTP_PUBLISH": f"127.0.0.1:{self.http}", "HA_STATS_PUBLISH": f"127.0.0.1:{self.stats}",
               "CONSUL_PUBLISH": f"127.0.0.1:{self.consul}"}
        profiles = [word for profile in self.profiles for word in ("--profile", profile)]
        # -f explicitly: with -p alone, `down` fails once the exited one-shots were removed (compose#11686).
        result = subprocess.run(["docker", "compose", "-f", "compose.yaml", "-p", self.project, *profiles, *args],
                                cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    @contextlib.contextmanager
    def up(self) -> Iterator[ComposeStack]:
        require("docker")
        self.run("down", "-v", "--remove-orphans", "-t", "1")
        try:
            self.run("up", "-d", "--build", "--wait", timeout=900)
            yield self
        finally:
            (ROOT / "build").mkdir(exist_ok=True)
            (ROOT / "build" / f"{self.project}.log").write_text(self.run("logs", "--no-color", check=False).stdout)
            self.run("down", "-v", "--remove-orphans", "-t", "2")  # a stack left behind would break the next one

    def webapp_ids(self) -> set[str]:
        """Server names of the running web app containers, as the registrator names them."""
        return {f"webapp-{cid[:12]}" for cid in self.run("ps", "-q", "--status", "running", "webapp").stdout.split()}

    def rendered_servers(self) -> set[str]:
        config = self.run("exec", "-T", "ha", "cat", "/etc/haproxy/haproxy.cfg").stdout
        return set(re.findall(r"^\s*server (\S+) ", config, re.M))

    def serving_servers(self) -> set[str] | None:
        """Servers of the rendered config that take traffic (not draining); None while `ha` cannot
        be asked (restarting)."""
        result = self.run("exec", "-T", "ha", "cat", "/etc/haproxy/haproxy.cfg", check=False, timeout=10)
        if result.returncode != 0:
            return None
        return set(re.findall(r"^\s*server (\S+) (?!.* disabled$).*$", result.stdout, re.M))

    def token(self, service: str) -> str:
        """The Consul ACL token the bootstrap gave `service` (registrator or ha)."""
        return self.run("exec", "-T", service, "cat", "/run/secrets/consul/token").stdout.strip()

    def in_ha(self, python: str) -> str:
        """Run Python in the `ha` container (the discovery package is installed there)."""
        return self.run("exec", "-T", "ha", "python3", "-c", python).stdout
