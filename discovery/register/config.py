"""The registrator's configuration: one frozen object built at the edge (`main.parse_args`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.model import ConsulAddress


@dataclass(frozen=True, slots=True)
class RegistratorConfig:
    consul: ConsulAddress = field(default_factory=lambda: ConsulAddress.parse("http://127.0.0.1:8500"))
    token: str | None = None
    docker_url: str | None = None
    owner: str | None = None  # None: the Docker host's name
    network: str | None = None
    only_label: str | None = None  # KEY or KEY=VALUE: only containers with this label
    resync: float = 30.0
    deregister_after: str = "1m"
    ready_timeout: float = 30.0
    listen: str | None = "127.0.0.1:9106"
    backoff_max: float = 10.0
