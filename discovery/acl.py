"""Consul's ACLs for the compose stack: a gossip key and one token per component, each with the
least it needs, made on first start and kept in volumes (ADR 0006).

    python -m discovery.acl keygen --out /keys/gossip.json
    python -m discovery.acl bootstrap --admin-dir /admin --token-dir registrator=/out/registrator ...

`keygen` runs before Consul starts (the key is part of its configuration); `bootstrap` runs once
Consul has a leader. Both are idempotent: a second run keeps the key, the management token and
every component token as they are, and only brings the policies up to date. Nothing secret is
ever baked into an image or printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import consul.aio
from consul.exceptions import ACLPermissionDenied, ConsulException

from discovery import cli
from discovery.consul_api import TRANSIENT, backoff, connect
from discovery.files import read_secret, write_secret
from discovery.model import ConsulAddress, InvalidValue, service_name

log = logging.getLogger("discovery.acl")

COMPONENTS = ("registrator", "watcher")
POLICY_PREFIX = "discovery-"
TOKEN_FILE = "token"
MANAGEMENT_FILE = "management.token"


class BootstrapError(Exception):
    """Something an operator has to fix; the message says what."""


class Unsettled(Exception):
    """Consul's answer may change in a moment: retried until the deadline."""


# --- what each component may do (pure)

def policies(services: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Policy name -> rules (Consul reads JSON rules as well as HCL). The registrator may write only
    the services it is allowed to register; the watcher may only read; Consul's own agent may keep
    its node up to date."""
    names = sorted({service_name(name) for name in services})
    if not names:
        raise InvalidValue("at least one service name the registrator may register is needed")
    read, write = {"policy": "read"}, {"policy": "write"}
    return {
        f"{POLICY_PREFIX}registrator": {"service": {name: write for name in names}},
        # Health answers list instances by node: without node read Consul filters them all out.
        f"{POLICY_PREFIX}watcher": {"service_prefix": {"": read}, "node_prefix": {"": read}},
        f"{POLICY_PREFIX}ui": {"service_prefix": {"": read}, "node_prefix": {"": read}},
        f"{POLICY_PREFIX}agent": {"node_prefix": {"": write}, "service_prefix": {"": read}},
    }


def gossip_key() -> str:
    """A key for Consul's gossip encryption: 32 random bytes, base64 (what `consul keygen` makes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


# --- files

def keygen(out: Path) -> bool:
    """Write Consul's gossip-encryption config once; True when a new key was made."""
    if out.exists():
        json.loads(out.read_text())["encrypt"]  # a damaged file is an error, not a reason to rotate
        return False
    # World-readable: Consul's image may run the agent as its own user; the volume holding the
    # file is mounted into the Consul containers only.
    write_secret(out, json.dumps({"encrypt": gossip_key()}) + "\n", 0o444)
    return True


# --- bootstrap (IO)

@dataclass(frozen=True, slots=True)
class Bootstrap:
    address: ConsulAddress
    admin_dir: Path  # the management token; mounted into this one-shot only
    token_dirs: Mapping[str, Path]  # component -> the volume that component mounts read-only
    services: tuple[str, ...]
    wait: float = 120.0  # for the ACL system to accept requests after a leader is elected
    agent_config: Path | None = None  # Consul config file with the agent token, for further servers

    async def run(self) -> None:
        """Every step again until one run gets through: each is idempotent, and a Consul that
        just elected a leader refuses ACL requests for a while ("legacy mode", "no leader")."""
        deadline, failures = time.monotonic() + self.wait, 0
        while True:
            client = connect(self.address, None, timeout=10.0)
            try:
                await self._steps(client)
                return
            except (*TRANSIENT, KeyError, Unsettled) as error:
                failures += 1
                if time.monotonic() > deadline:
                    raise BootstrapError(f"Consul at {self.address} did not accept ACL requests within "
                                         f"{self.wait:.0f} s: {error}") from error
                delay = backoff(failures, 0.2, 3.0)
                log.info("Consul not ready for ACLs yet (%s); retry in %.1fs", error, delay)
                await asyncio.sleep(delay)
            finally:
                await client.close()

    async def _steps(self, client: consul.aio.Consul) -> None:
        management = await self._management(client)
        by_name = await self._policies(client, management)
        for component, directory in self.token_dirs.items():
            await self._component_token(client, management, component, directory, by_name)
        # For people (the UI): read-only like the watcher, but its own token, so that it can be
        # revoked or widened without touching a component.
        await self._token(client, management, "ui", self.admin_dir / "ui.token", [f"{POLICY_PREFIX}ui"], 0o400)
        # Consul's own agent: without a token it cannot update its node (deny by default).
        agent_secret = await self._token(client, management, "agent", self.admin_dir / "agent.token",
                                         [f"{POLICY_PREFIX}agent"], 0o400)
        await client.agent.token.set_agent(agent_secret, token=management)
        if self.agent_config is not None:
            # Further servers (the `cluster` profile) load it at start: set through the API, it
            # would be needed on each of them before they could be asked.
            write_secret(self.agent_config, json.dumps({"acl": {"tokens": {"agent": agent_secret}}}) + "\n", 0o444)

    async def _management(self, client: consul.aio.Consul) -> str:
        """The management token kept in the admin volume, or a new one from a first bootstrap.
        A Consul whose data was wiped while the volume was kept forgets the kept token but
        accepts a bootstrap again: every token is then made anew with the secrets kept."""
        path = self.admin_dir / MANAGEMENT_FILE
        kept = read_secret(path)
        if kept is not None:
            try:
                await client.acl.token.read_self(token=kept)
                return kept
            except ACLPermissionDenied:
                log.warning("Consul does not know the management token in %s (its data was wiped?): "
                            "bootstrapping again", path)
        try:
            made = await client.acl.bootstrap()
        except ACLPermissionDenied as error:
            if kept is not None:
                # Bootstrapped, yet our token unknown: a server still loading its state, or a
                # Consul someone else bootstrapped. Retried until --wait runs out, then fatal.
                raise Unsettled(f"Consul knows neither the token in {path} nor allows a bootstrap; if this "
                                "lasts, its ACLs belong to someone else: `docker compose down -v` starts afresh, "
                                "or put their management token there") from error
            raise BootstrapError(
                f"Consul's ACLs were bootstrapped by someone else and {path} has no management token; "
                "run `docker compose down -v` for a fresh start, or put the management token there") from error
        # Consul 1.8 cannot take a secret of ours: a crash before this line loses the token
        # (then `down -v`); the window is one file write.
        write_secret(path, made["SecretID"] + "\n", 0o400)
        log.info("ACLs bootstrapped; the management token is in %s", path)
        return str(made["SecretID"])

    async def _policies(self, client: consul.aio.Consul, management: str) -> dict[str, str]:
        existing = {p["Name"]: p["ID"] for p in await client.acl.policy.list(token=management)}
        for name, rules in policies(self.services).items():
            description = "discovery: least privilege for one component (ADR 0006)"
            if name in existing:
                await client.acl.policy.update(existing[name], name, token=management, description=description,
                                               rules=rules)
            else:
                made = await client.acl.policy.create(name, token=management, description=description, rules=rules)
                existing[name] = made["ID"]
        return existing

    async def _component_token(self, client: consul.aio.Consul, management: str, component: str, directory: Path,
                               by_name: Mapping[str, str]) -> None:
        if component not in COMPONENTS:
            raise BootstrapError(f"unknown component {component!r}: want one of {', '.join(COMPONENTS)}")
        # 0444: the volume is the boundary (only this component mounts it, read-only); inside the
        # container it runs as a user of its own image, whose uid this one-shot cannot know.
        await self._token(client, management, component, directory / TOKEN_FILE,
                          [f"{POLICY_PREFIX}{component}"], 0o444)

    async def _token(self, client: consul.aio.Consul, management: str, component: str, path: Path,
                     policy_names: list[str], mode: int) -> str:
        """The token in `path`, made in Consul if Consul does not know it, with exactly `policy_names`."""
        description = f"discovery {component}"
        kept = read_secret(path)
        known = None
        if kept is not None:
            try:
                known = await client.acl.token.read_self(token=kept)
            except ACLPermissionDenied:
                known = None  # Consul lost it (data wiped): make it again with the same secret
        secret = kept or str(uuid.uuid4())
        if known is None:
            await client.acl.token.create(token=management, accessor_id=str(uuid.uuid4()), secret_id=secret,
                                          policies_name=policy_names, description=description)
            log.info("made the %s token", component)
        else:
            await client.acl.token.update(known["AccessorID"], token=management, policies_name=policy_names,
                                          description=description)
        write_secret(path, secret + "\n", mode)
        return secret


# --- command line

def token_dir(text: str) -> tuple[str, Path]:
    component, sep, directory = text.partition("=")
    if not sep or component not in COMPONENTS or not directory:
        raise ValueError(f"{text!r}: want component=directory, component one of {', '.join(COMPONENTS)}")
    return component, Path(directory)


def service_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        service_name(name)
    if not names:
        raise ValueError("want at least one service name")
    return names


def build_parser(environ: Mapping[str, str]) -> cli.EnvParser:
    parser = cli.EnvParser(environ=environ, prog="python -m discovery.acl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_key = commands.add_parser("keygen", help="write Consul's gossip-encryption config once", environ=environ)
    make_key.add_argument("--out", type=Path, required=True, help="the JSON file Consul loads (-config-file)")
    boot = commands.add_parser("bootstrap", help="bootstrap ACLs and write one token per component",
                               environ=environ)
    boot.option("--consul", env="CONSUL_HTTP_ADDR", default="http://127.0.0.1:8500", metavar="URL",
                help="Consul agent HTTP API address")
    boot.add_argument("--admin-dir", type=Path, required=True, help="where the management token is kept")
    boot.add_argument("--token-dir", dest="tokens", type=token_dir, action="append", default=[],
                      metavar="COMPONENT=DIR", help="write COMPONENT's token into DIR/token (repeatable)")
    boot.add_argument("--services", type=service_list, required=True,
                      help="comma-separated service names the registrator may register")
    boot.add_argument("--wait", type=cli.positive_seconds, default=120.0,
                      help="how long to wait for Consul to accept ACL requests")
    boot.add_argument("--agent-config", type=Path, default=None,
                      help="also write the agent token as a Consul config file here (for more servers)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity")
    return parser


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.command == "bootstrap":
        try:
            args.consul = ConsulAddress.parse(args.consul)
        except InvalidValue as error:
            parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, os.environ)
    cli.setup_logging(args.log_level)
    try:
        if args.command == "keygen":
            log.info("gossip key %s %s", "written to" if keygen(args.out) else "kept in", args.out)
            return cli.EXIT_OK
        asyncio.run(Bootstrap(args.consul, args.admin_dir, dict(args.tokens), args.services, args.wait,
                              args.agent_config).run())
    except (BootstrapError, OSError, ValueError, KeyError, ConsulException, aiohttp.ClientError) as error:
        log.error("fatal: %s", error)
        return cli.EXIT_FATAL
    log.info("ACL tokens ready for %s", ", ".join(dict(args.tokens)) or "no component")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
