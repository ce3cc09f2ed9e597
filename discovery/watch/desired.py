"""From what Consul says to what HAProxy should serve: opt-in, routes and the default service.

Pure: a function of the catalog and the routing policy, with no logging and no metrics — what it
refuses comes back as `Refusal`s, and the caller says them. The routing tags are one table,
`ROUTING_TAGS`, which drives parsing, `--help` and the docs alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from discovery.model import CatalogEntry, DesiredState, InvalidValue, Route, Service, service_name


def _route(value: str) -> Route:
    host, slash, rest = value.partition("/")
    return Route(host=host, path=slash + rest if slash else None)


@dataclass(frozen=True, slots=True)
class RoutingTag:
    """One routing tag: `<prefix>` + `suffix`, with what it means; `route` turns its value into a
    Route (None: a tag without a value)."""

    suffix: str
    shown: str  # how --help and the docs write it, after the prefix
    meaning: str
    route: Callable[[str], Route] | None = None


ROUTING_TAGS: tuple[RoutingTag, ...] = (
    RoutingTag("", "", "opt the service in: it gets a backend"),
    RoutingTag(".default", ".default", "the service answers requests that no route matches"),
    RoutingTag(".host", ".host=<host>", "route requests for that Host header", lambda v: Route(host=v)),
    RoutingTag(".path", ".path=<prefix>", "route requests whose path starts with <prefix>", lambda v: Route(path=v)),
    RoutingTag(".route", ".route=<host><prefix>", "route requests for that host under that prefix", _route),
)
_ROUTES = {tag.suffix.removeprefix("."): tag.route for tag in ROUTING_TAGS if tag.route is not None}


def routing_tags_help(prefix: str = "lb") -> str:
    """The routing tags as `--help` lists them."""
    return "\n".join(f"  {prefix + tag.shown:<23}  {tag.meaning}" for tag in ROUTING_TAGS)


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    tag_prefix: str = "lb"
    default_service: str | None = None

    def __post_init__(self) -> None:
        service_name(self.tag_prefix)
        if self.default_service is not None:
            service_name(self.default_service)

    def opted_in(self, tags: Iterable[str]) -> bool:
        return self.tag_prefix in tags


@dataclass(frozen=True, slots=True)
class Refusal:
    """Something in the catalog that is not routed as asked, and why: `kind` is what was refused
    (a tag, a service) or overruled (a second default)."""

    kind: str
    service: str
    reason: str

    @property
    def counted(self) -> bool:
        """Whether it is a refused value (discovery_refused_values_total), not a choice made."""
        return self.kind != "default"

    def __str__(self) -> str:
        return self.reason if self.kind == "default" else f"service {self.service!r}: {self.reason}"


class Unroutable(InvalidValue):
    """The catalog as a whole cannot be served (e.g. two instances that would share one server
    name); `refusals` holds what was refused on the way, for the caller to say all the same."""

    def __init__(self, error: InvalidValue, refusals: list[Refusal]) -> None:
        super().__init__(str(error))
        self.refusals = refusals


def parse_routes(tags: Iterable[str], prefix: str) -> tuple[tuple[Route, ...], bool, list[str]]:
    """Routes and the default flag from a service's tags, plus a reason for each tag refused."""
    routes: list[Route] = []
    is_default = False
    refused: list[str] = []
    for tag in sorted(tags):
        if tag == f"{prefix}.default":
            is_default = True
            continue
        key, sep, value = tag.partition("=")
        if not sep or not key.startswith(f"{prefix}."):
            continue
        make = _ROUTES.get(key.removeprefix(f"{prefix}."))
        if make is None:
            refused.append(f"tag {tag!r}: unknown key {key.removeprefix(f'{prefix}.')!r}")
            continue
        try:
            routes.append(make(value))
        except InvalidValue as error:
            refused.append(str(error))
    return tuple(routes), is_default, refused


def desired_state(catalog: Iterable[CatalogEntry], policy: RoutingPolicy) -> tuple[DesiredState, list[Refusal]]:
    """The state to serve, and what of the catalog it leaves out (each with its reason)."""
    services: list[Service] = []
    refusals: list[Refusal] = []
    for entry in sorted(catalog, key=lambda e: e.name):
        if not policy.opted_in(entry.tags):
            continue
        routes, is_default, refused = parse_routes(entry.tags, policy.tag_prefix)
        refusals += [Refusal("tag", entry.name, f"ignoring {reason}") for reason in refused]
        if policy.default_service is not None:
            # An explicit --default-service wins over tags, so that two services tagged
            # default never leave the frontend ambiguous.
            is_default = entry.name == policy.default_service
        try:
            services.append(Service(entry.name, entry.instances, routes, is_default))
        except InvalidValue as error:  # one bad service must not hold back all the others
            refusals.append(Refusal("service", entry.name, f"not routed: {error}"))
    defaults = [s for s in services if s.is_default]
    if len(defaults) > 1:
        keep = defaults[0].name
        refusals.append(Refusal(
            "default", keep, f"services {', '.join(s.name for s in defaults)} are all tagged "
            f"{policy.tag_prefix}.default: using {keep} (set --default-service to choose)"))
        services = [Service(s.name, s.instances, s.routes, s.name == keep) for s in services]
    try:
        return DesiredState(tuple(services)), refusals
    except InvalidValue as error:
        raise Unroutable(error, refusals) from error
