"""From what Consul says to what HAProxy should serve: opt-in, routes and the default service.

Pure: a function of the catalog and the routing policy. Tags (with the default prefix `lb`):

    lb                      opt in: the service gets a backend
    lb.default              the service answers requests no route matches
    lb.host=<host>          requests for that Host header
    lb.path=<prefix>        requests whose path starts with the prefix, any host
    lb.route=<host><prefix> requests for that host under that prefix (e.g. api.local/v2)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from discovery import metrics
from discovery.model import CatalogEntry, DesiredState, InvalidValue, Route, Service, service_name

log = logging.getLogger(__name__)


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
        try:
            match key.removeprefix(f"{prefix}."):
                case "host":
                    routes.append(Route(host=value))
                case "path":
                    routes.append(Route(path=value))
                case "route":
                    host, slash, rest = value.partition("/")
                    routes.append(Route(host=host, path=slash + rest if slash else None))
                case other:
                    refused.append(f"tag {tag!r}: unknown key {other!r}")
        except InvalidValue as error:
            refused.append(str(error))
    return tuple(routes), is_default, refused


def desired_state(catalog: Iterable[CatalogEntry], policy: RoutingPolicy) -> DesiredState:
    services: list[Service] = []
    for entry in sorted(catalog, key=lambda e: e.name):
        if not policy.opted_in(entry.tags):
            continue
        routes, is_default, refused = parse_routes(entry.tags, policy.tag_prefix)
        for reason in refused:
            log.warning("service %r: ignoring %s", entry.name, reason)
            metrics.REFUSED.labels("tag").inc()
        if policy.default_service is not None:
            # An explicit --default-service wins over tags, so that two services tagged
            # default never leave the frontend ambiguous.
            is_default = entry.name == policy.default_service
        try:
            services.append(Service(entry.name, entry.instances, routes, is_default))
        except InvalidValue as error:  # one bad service must not hold back all the others
            log.warning("service %r: not routed: %s", entry.name, error)
            metrics.REFUSED.labels("service").inc()
    defaults = [s for s in services if s.is_default]
    if len(defaults) > 1:
        keep = defaults[0].name
        log.warning(
            "services %s are all tagged %s.default: using %s (set --default-service to choose)",
            ", ".join(s.name for s in defaults), policy.tag_prefix, keep,
        )
        services = [Service(s.name, s.instances, s.routes, s.name == keep) for s in services]
    return DesiredState(tuple(services))
