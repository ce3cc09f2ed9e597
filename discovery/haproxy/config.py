"""haproxy.cfg from a desired state, through a Jinja2 template, and read back from a rendered file.

The shipped template is `discovery/haproxy/templates/haproxy.cfg.j2`; a user's own template replaces it
by path. Values reaching the template were validated by `discovery.model`; the environment is
strict on top of that (an undefined name is an error, not an empty string) and the `quote`
filter is there for templates that print free text.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2

from discovery.model import DesiredState, Instance, InvalidValue, Route, ServerKey, Service, backend_name

DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "haproxy.cfg.j2"


class TemplateError(Exception):
    """The template could not be loaded or rendered; the message says where and why."""


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Settings of the HAProxy process that the template needs besides the services."""

    http_bind: str = ":80"
    stats_bind: str = ":1936"
    stats_uri: str = "/"
    runtime_socket: str = "/run/haproxy/admin.sock"
    user: str | None = None
    group: str | None = None
    maxconn: int = 4096
    server_state_file: str | None = None
    sticky: bool = False
    stats_user: str = "admin"
    stats_password: str | None = None  # None: the stats page without credentials (explicit choice)

    def __repr__(self) -> str:  # never print the password in a log line or a traceback
        return f"RenderSettings(http_bind={self.http_bind!r}, stats_bind={self.stats_bind!r}, ...)"


def quote(value: object) -> str:
    """Quote a string the way HAProxy's config parser reads double-quoted words."""
    text = str(value)
    if any(c in text for c in "\r\n\0"):
        raise ValueError("refusing to quote a value with a line break or NUL")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def ordered_routes(state: DesiredState) -> list[tuple[Route, Service]]:
    """Routes in the order HAProxy must test them: the most specific first.

    `use_backend` rules are evaluated top to bottom, so host+path beats path beats host, and a
    longer path beats a shorter one.
    """
    pairs = [(route, service) for service in state.services for route in service.routes]
    return sorted(
        pairs,
        key=lambda p: (p[0].path is None, p[0].host is None, -len(p[0].path or ""), p[0].host or "", p[1].name),
    )


def server_arguments(text: str, backends: set[str] | None = None) -> dict[ServerKey, str]:
    """`(backend, server) -> "addr:port options..."` from a rendered config: what `add server`
    must be given so that a server added at run time is the one the file describes. `backends`
    limits it to those (a change touches a few of 500 backends: the rest is not split into words)."""
    found: dict[ServerKey, str] = {}
    backend = None
    for raw in text.splitlines():
        if raw[:1].isspace() and backend is None:
            continue  # inside a section that is not a wanted backend
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace():
            backend = words[1] if words[0] == "backend" and len(words) > 1 else None
            if backends is not None and backend not in backends:
                backend = None
        elif backend and words[0] == "server" and len(words) >= 3:
            found[ServerKey(backend, words[1])] = " ".join(words[2:])
    return found


def file_servers(text: str) -> set[tuple[str, str, str]]:
    """(backend, server, address:port) of every server a rendered config lists."""
    return {(backend, name, arguments.split()[0]) for (backend, name), arguments in server_arguments(text).items()}


def served_state(text: str) -> DesiredState:
    """The services and serving instances a rendered config lists (disabled, i.e. draining,
    servers left out), as far as the file tells: enough for the shrink guard to compare a first
    answer with what HAProxy runs after a watcher restart. Routes are not read back; a backend
    not named by the shipped template's rule, or a line that does not parse, is skipped."""
    default = next((line.split()[1] for line in text.splitlines()
                    if line.split()[:1] == ["default_backend"] and len(line.split()) > 1), None)
    instances: dict[str, list[Instance]] = {}
    for (backend, name), arguments in server_arguments(text).items():
        words = arguments.split()
        if not backend.startswith("be_") or "disabled" in words:
            continue
        host, _, number = words[0].rpartition(":")
        try:
            instance = Instance(backend.removeprefix("be_"), name, host.strip("[]"), int(number))
        except (InvalidValue, ValueError):
            continue
        instances.setdefault(instance.service, []).append(instance)
    return DesiredState(tuple(Service(service, tuple(found), is_default=backend_name(service) == default)
                              for service, found in sorted(instances.items())))


Stamp = tuple[tuple[str, int], ...]


class Renderer:
    """Loads the template on every render so that an edited template is picked up live."""

    def __init__(self, template: Path = DEFAULT_TEMPLATE) -> None:
        self.template = template
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template.parent)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # HTML escaping means nothing to HAProxy; values are validated instead
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,
        )
        self._env.filters["quote"] = quote

    def stamp(self) -> Stamp | None:
        """Modification times (ns) of the template and of every template it has loaded (includes,
        imports, a base it extends): equal stamps render equal states equally. None: unknown."""
        files = {str(self.template)} | {t.filename for t in (self._env.cache or {}).values() if t.filename}
        try:
            return tuple(sorted((name, os.stat(name).st_mtime_ns) for name in files))
        except OSError:
            return None

    def render_stamped(self, state: DesiredState, settings: RenderSettings) -> tuple[str, Stamp | None]:
        """A render and the stamp it was made with; None when a template changed meanwhile."""
        before = self.stamp()
        text = self.render(state, settings)
        return text, before if before is not None and self.stamp() == before else None

    def render(self, state: DesiredState, settings: RenderSettings) -> str:
        try:
            template = self._env.get_template(self.template.name)
            return template.render(
                services=state.services,
                routes=ordered_routes(state),
                default=state.default,
                settings=asdict(settings),
            )
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(f"{self.template}:{error.lineno}: {error.message}") from error
        except jinja2.TemplateNotFound as error:
            raise TemplateError(f"{self.template}: template not found") from error
        except (jinja2.TemplateError, ValueError, TypeError, OSError) as error:
            raise TemplateError(f"{self.template}: {type(error).__name__}: {error}") from error
