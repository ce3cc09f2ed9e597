"""Value types shared by the registrator and the watcher.

Everything that reaches a value here came from outside (Docker labels, Consul's catalog) and
ends up in haproxy.cfg, so each type refuses bad values at construction: parse, don't validate
later. A value that does not fit raises `InvalidValue` with a message naming the field.
"""

from __future__ import annotations

import hashlib
import ipaddress
import operator
import re
from dataclasses import dataclass, field
from typing import NamedTuple

# Consul service names that are also DNS labels (Consul warns on anything else) and HAProxy
# identifiers: letters, digits, '-', '_', '.'; at most 63 characters.
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
# HAProxy accepts letters, digits, '-', '_', '.' and ':' in proxy and server names; 100 leaves
# room for the registrator's `<63-character service name>-<12-character container id>`.
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# Path prefixes end up inside an ACL: no spaces, quotes, '#', backslashes or control characters.
_PATH_PREFIX = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")
# Tags are free text in Consul; we keep only those that could be written safely.
_TAG = re.compile(r"^[A-Za-z0-9_.:=/,-]{1,128}$")


class InvalidValue(ValueError):
    """A value from outside does not fit the grammar HAProxy and Consul accept."""


def shown(value: object, limit: int = 80) -> str:
    """A value for a log line: quoted (no raw line breaks) and cut short (no 5,000-character lines)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    return repr(value)


def service_name(value: str) -> str:
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        raise InvalidValue(f"service name {shown(value)}: want 1-63 of [A-Za-z0-9_.-], alphanumeric at both ends")
    return value


def port(value: int | str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidValue(f"port {shown(value)}: not an integer") from None
    if isinstance(value, bool) or not 1 <= number <= 65535:
        raise InvalidValue(f"port {shown(value)}: want 1-65535")
    return number


def address(value: str) -> str:
    try:
        parsed = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise InvalidValue(f"address {shown(value)}: not an IPv4 or IPv6 address") from None
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.scope_id is not None:  # "fe80::1%eth0": the zone is free text
            raise InvalidValue(f"address {shown(value)}: scoped IPv6 addresses are not routed")
        if parsed.ipv4_mapped is not None:  # would slip past the checks below as IPv6
            raise InvalidValue(f"address {shown(value)}: IPv4-mapped; register the IPv4 address")
    if parsed.is_unspecified or parsed.is_multicast:
        raise InvalidValue(f"address {shown(value)}: not a unicast address")
    if parsed.is_link_local:  # 169.254.169.254 and friends: metadata services, never a back end
        raise InvalidValue(f"address {shown(value)}: link-local")
    return str(parsed)


def tag(value: str) -> str:
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise InvalidValue(f"tag {shown(value)}: want 1-128 of [A-Za-z0-9_.:=/,-]")
    return value


def hostname(value: str) -> str:
    lowered = value.lower() if isinstance(value, str) else value
    if not isinstance(lowered, str) or not _HOSTNAME.fullmatch(lowered):
        raise InvalidValue(f"host {shown(value)}: not a DNS host name")
    return lowered


def path_prefix(value: str) -> str:
    if not isinstance(value, str) or not _PATH_PREFIX.fullmatch(value):
        raise InvalidValue(f"path {shown(value)}: want '/' then up to 200 of [A-Za-z0-9._~/-]")
    return value


def server_name(instance_id: str) -> str:
    """A stable HAProxy server name for a Consul service ID.

    Derived from the instance, never from a counter, so logs, stats rows and cookies keep
    meaning across restarts. IDs HAProxy would refuse are replaced by a short digest.
    """
    if _SERVER_NAME.fullmatch(instance_id):
        return instance_id
    return "id-" + hashlib.sha256(instance_id.encode()).hexdigest()[:16]


@dataclass(frozen=True, order=True, slots=True)
class Instance:
    """One passing instance of a service: what becomes one `server` line."""

    service: str
    id: str
    address: str
    port: int
    # Derived from `id` once: a state of 10,000 instances asks for every name several times a change.
    server_name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        service_name(self.service)
        if not isinstance(self.id, str) or not 1 <= len(self.id) <= 256:
            raise InvalidValue(f"instance id {shown(self.id)}: want 1-256 characters")
        object.__setattr__(self, "address", address(self.address))
        object.__setattr__(self, "port", port(self.port))
        object.__setattr__(self, "server_name", server_name(self.id))

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, order=True, slots=True)
class Route:
    """Requests for `host` (any host when None) under `path` go to a service."""

    host: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.host is None and self.path is None:
            raise InvalidValue("route: want a host, a path, or both")
        if self.host is not None:
            object.__setattr__(self, "host", hostname(self.host))
        if self.path is not None:
            object.__setattr__(self, "path", path_prefix(self.path))


@dataclass(frozen=True, slots=True)
class Service:
    """A load-balanced service: one HAProxy backend."""

    name: str
    instances: tuple[Instance, ...] = ()
    routes: tuple[Route, ...] = ()
    is_default: bool = False
    # Instances Consul no longer lists that HAProxy still drains: no new requests, kept until
    # their last request ends. Only the watcher sets these; Consul's view never has any.
    draining: tuple[Instance, ...] = ()

    def __post_init__(self) -> None:
        service_name(self.name)
        for instance in (*self.instances, *self.draining):
            if instance.service != self.name:
                raise InvalidValue(f"instance {instance.id!r} belongs to {instance.service!r}, not {self.name!r}")
        # Canonical order so that equal states render to equal bytes.
        object.__setattr__(self, "instances", tuple(sorted(set(self.instances), key=_instance_order)))
        object.__setattr__(self, "draining", tuple(sorted(set(self.draining), key=_instance_order)))
        object.__setattr__(self, "routes", tuple(sorted(set(self.routes), key=_route_key)))
        names = [i.server_name for i in (*self.instances, *self.draining)]
        if len(names) != len(set(names)):
            raise InvalidValue(f"service {self.name!r}: two instances map to one server name")

    @property
    def backend(self) -> str:
        return backend_name(self.name)


def backend_name(service: str) -> str:
    """The HAProxy backend of a service, as the shipped template names it."""
    return f"be_{service}"


class ServerKey(NamedTuple):
    """A server as HAProxy names it: `backend/server` in the Runtime API, a key of every table."""

    backend: str
    server: str

    @classmethod
    def of(cls, instance: Instance) -> ServerKey:
        return cls(backend_name(instance.service), instance.server_name)

    def __str__(self) -> str:
        return f"{self.backend}/{self.server}"


# Instance's own order (its fields, in turn) as a key: sorting 10,000 by it takes half the time of the
# dataclass's __lt__, which builds two tuples for every comparison.
_instance_order = operator.attrgetter("service", "id", "address", "port")


def _route_key(route: Route) -> tuple[str, str]:
    return (route.host or "", route.path or "")


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the load balancer should serve, in canonical order."""

    services: tuple[Service, ...] = field(default=())

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.services, key=lambda s: s.name))
        names = [s.name for s in ordered]
        if len(names) != len(set(names)):
            raise InvalidValue("desired state: a service appears twice")
        if sum(s.is_default for s in ordered) > 1:
            raise InvalidValue("desired state: more than one default service")
        object.__setattr__(self, "services", ordered)

    @property
    def default(self) -> Service | None:
        return next((s for s in self.services if s.is_default), None)

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.services)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What Consul says of one service: its tags, and its passing instances."""

    name: str
    tags: frozenset[str] = frozenset()
    instances: tuple[Instance, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsulAddress:
    """Where Consul's HTTP API listens: `http://host:port`, `https://host:port` or `host:port`."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ConsulAddress:
        scheme, sep, rest = text.strip().rpartition("://")
        scheme = scheme if sep else "http"
        if scheme not in ("http", "https"):
            raise InvalidValue(f"Consul address {text!r}: scheme must be http or https")
        host, _, number = rest.rstrip("/").rpartition(":") if ":" in rest else (rest, "", "8500")
        host = host.strip("[]")
        if not host or not re.fullmatch(r"[A-Za-z0-9._:-]{1,253}", host):
            raise InvalidValue(f"Consul address {text!r}: want [http(s)://]host[:port]")
        return cls(scheme, host, port(number or "8500"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


OWNER_META = "managed-by"
OWNER_VALUE = "discovery-registrator"


@dataclass(frozen=True, order=True, slots=True)
class HttpCheck:
    """An HTTP health check Consul runs against an instance."""

    path: str = "/health"
    interval: str = "2s"
    timeout: str = "1s"

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not re.fullmatch(r"/[A-Za-z0-9._~/?=&%-]{0,200}", self.path):
            raise InvalidValue(f"health check path {self.path!r}: want '/' then URL path characters")
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if not isinstance(value, str) or not re.fullmatch(r"[1-9][0-9]{0,5}(ms|s|m)", value):
                raise InvalidValue(f"health check {name} {shown(value)}: want a duration like 2s or 500ms")

    @property
    def fingerprint(self) -> str:
        return f"http {self.path} {self.interval} {self.timeout}"


@dataclass(frozen=True, order=True, slots=True)
class Registration:
    """One service instance the registrator keeps in Consul for one container."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    check: HttpCheck | None = None
    container: str = ""
    owner: str = ""

    def __post_init__(self) -> None:
        service_name(self.name)
        if not _SERVER_NAME.fullmatch(self.id):
            raise InvalidValue(f"service id {shown(self.id)}: want 1-100 of [A-Za-z0-9_.:-]")
        object.__setattr__(self, "address", address(self.address))
        object.__setattr__(self, "port", port(self.port))
        object.__setattr__(self, "tags", tuple(sorted({tag(t) for t in self.tags})))

    @property
    def meta(self) -> dict[str, str]:
        """What marks the registration as ours, and what tells a changed check from an equal one."""
        return {
            OWNER_META: OWNER_VALUE,
            "registrator": self.owner,
            "container": self.container,
            "check": self.check.fingerprint if self.check else "none",
        }
