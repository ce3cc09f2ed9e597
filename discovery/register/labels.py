"""Which containers opted in, and the registration each asks for. Pure: a function of a
container's inspect data.

Labels (preferred) or registrator's well-known environment variables opt a container in. The
table `LABELS` is the one place they are written: it drives parsing, `--help` and the docs.
`discovery.check.http=none` registers without a health check (the instance is then passing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from discovery.model import HttpCheck, InvalidValue, Registration
from discovery.model import port as parse_port


class NotRegistrable(Exception):
    """The container opted in but its labels or networks do not make a valid registration."""


@dataclass(frozen=True, slots=True)
class Label:
    """One setting a container gives: a label, the environment variable read when the label is
    absent (None: label only), the default, and what it means."""

    name: str
    env: str | None
    default: str | None
    meaning: str


LABELS: tuple[Label, ...] = (
    Label("discovery.service", "SERVICE_NAME", None, "service name; the opt-in"),
    Label("discovery.port", "SERVICE_PORT", None, "container port (default: the only exposed TCP port)"),
    Label("discovery.tags", "SERVICE_TAGS", "", "comma-separated Consul tags (lb, lb.default, lb.host=...)"),
    Label("discovery.check.http", "SERVICE_CHECK_HTTP", "/health", "HTTP health path Consul checks ('none': no check)"),
    Label("discovery.check.interval", "SERVICE_CHECK_INTERVAL", "2s", "health check interval"),
    Label("discovery.check.timeout", "SERVICE_CHECK_TIMEOUT", "1s", "health check timeout"),
    Label("discovery.network", None, None, "Docker network whose address is registered (default: --network)"),
    Label("discovery.ignore", "SERVICE_IGNORE", None, "any value: never register"),
)
_BY_NAME = {label.name: label for label in LABELS}


def labels_help() -> str:
    """The labels as `--help` lists them."""
    lines = []
    for label in LABELS:
        env = f"[{label.env}]" if label.env else ""
        default = f" (default {label.default})" if label.default else ""
        lines.append(f"  {label.name:<25} {env:<25} {label.meaning}{default}")
    return "\n".join(lines)


def _env(attrs: dict[str, Any]) -> dict[str, str]:
    pairs = (item.partition("=") for item in (attrs.get("Config") or {}).get("Env") or [])
    return {key: value for key, _, value in pairs}


def registration(attrs: dict[str, Any], owner: str, network: str | None = None) -> Registration | None:
    """The registration a container asks for; None when it did not opt in.

    Raises NotRegistrable with the reason when it opted in with values that cannot be used.
    """
    config = attrs.get("Config") or {}
    labels: dict[str, str] = config.get("Labels") or {}
    env = _env(attrs)

    def setting(name: str, default: str | None = None) -> str | None:
        """The label, else its environment variable (as given, stripped), else the default."""
        label = _BY_NAME[name]
        if name in labels:
            return labels[name].strip()
        if label.env and label.env in env:
            return env[label.env].strip()
        return label.default if default is None else default

    def given(name: str) -> str:
        """The setting, with an empty value read as the table's default."""
        return setting(name) or _BY_NAME[name].default or ""

    name = setting("discovery.service")
    if not name or setting("discovery.ignore"):
        return None
    container_id: str = attrs.get("Id", "")
    try:
        port = setting("discovery.port") or _only_exposed_port(config)
        path = given("discovery.check.http")
        check = None if path.lower() == "none" else HttpCheck(
            path, given("discovery.check.interval"), given("discovery.check.timeout"))
        tags = [t.strip() for t in given("discovery.tags").split(",") if t.strip()]
        return Registration(
            id=f"{name}-{container_id[:12]}",
            name=name,
            address=_address(attrs, setting("discovery.network", network)),
            port=parse_port(port),
            tags=tuple(tags),
            check=check,
            container=container_id,
            owner=owner,
        )
    except InvalidValue as error:
        raise NotRegistrable(str(error)) from None


def _only_exposed_port(config: dict[str, Any]) -> str:
    exposed = sorted((config.get("ExposedPorts") or {}).keys())
    tcp = [p.split("/")[0] for p in exposed if p.endswith("/tcp")]
    if len(tcp) != 1:
        raise NotRegistrable(f"set discovery.port: the container exposes {len(tcp)} TCP ports {tcp}")
    return tcp[0]


def _address(attrs: dict[str, Any], network: str | None) -> str:
    networks: dict[str, Any] = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    if network:
        if network not in networks:
            raise NotRegistrable(f"not attached to network {network!r} (attached: {sorted(networks)})")
        chosen = networks[network]
    elif len(networks) == 1:
        chosen = next(iter(networks.values()))
    else:
        raise NotRegistrable(f"set discovery.network: the container is on {len(networks)} networks {sorted(networks)}")
    addr = (chosen or {}).get("IPAddress") or ""
    if not addr:
        raise NotRegistrable("the container has no IP address (host network or not started)")
    return str(addr)
