"""Hostile values through the real path: Consul's HTTP API -> the watcher (`--once`) -> haproxy.cfg.

Hypothesis generates batches of catalog registrations — service names, IDs, addresses, ports,
tags (routing tags among them), meta and the node's address — that mix plausible values with
hostile ones: line breaks, `#`, spaces, quotes, backslashes, `$`, control characters, unicode,
strings of up to 5,000 characters, HAProxy directives such as `\\n  bind :8081`. A batch is
registered on a node of its own, read back from Consul the way the watcher reads it (what Consul
stores is the real input: it refuses some values, keeps one of two IDs that differ only by case,
answers for a service name case-insensitively), then one `python -m discovery.watch --once`
renders it, validates it and writes the file. The file must:

- pass `haproxy -c`, and hold only printable ASCII;
- parsed into sections and their lines, be the empty catalog's config except for `backend be_*`
  sections, `use_backend` lines and the `default_backend` line, each matching a strict pattern
  written here, independently of discovery.model;
- hold exactly the servers, routes and default that discovery.model's grammar (the source of
  truth) accepts from what Consul stores: accepted values appear exactly;
- hold no piece of a value the grammar refuses outside those accepted lines and the baseline.

The watcher's log must stay one record per line (values are logged quoted). Every generated value
is counted and classified; the counts are printed at the end of the run.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import operator
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from discovery import model
from discovery.model import InvalidValue, Route
from tests.hostile.conftest import TALLY, summary
from tests.processes import consul_dev
from tests.support import require

pytestmark = [pytest.mark.hostile, pytest.mark.integration]

PREFIX = "lb"  # the watcher's default --tag-prefix
SERVER_OPTIONS = "check inter 2s fall 2 rise 2"  # what the shipped template puts after each endpoint
NO_INSTANCE = "    # No passing instance in Consul: HAProxy answers 503."
BATCHES = 30  # of 50-70 registrations: about 11,500 values
WANTED = 10_000  # values the issue asks for

# --------------------------------------------------------------------------------------------
# Strategies

ATOMS = (
    "\n  bind :8081", "\nbackend evil", "\n    server evil 10.9.9.9:80", "\r\nfrontend f", "\n    http-request deny",
    "#", " # comment", '"', "'", '"quoted"', "\\", "\\n", "$", "${HOME}", "`id`", "\x00", "\t", " ", "\r", "\n", "\x0b",
    "\x1b[31m", "\x7f", "\x85", "\u2028", "\u202e", "\u200b", "\ufeff", "\u00a0", "\u0130", "\u212a", "\U0001f600",
    "\uff03", "{{ 7*7 }}", "{%", ";", "]:80", "[::1]", "%eth0", "%0a", "..", "/", "=", ",", ":", "if TRUE",
    " backup", " weight 0", " check", "lb", "lb.default",
)
word = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,10}", fullmatch=True)


def long_text(most: int) -> st.SearchStrategy[str]:
    units = st.sampled_from(("a", "x#", "\n", "\u00e9", "\U0001f600", "a b", "0"))
    return st.builds(lambda unit, n: (unit * n)[:n], units, st.integers(254, most))


short_hostile = st.one_of(
    st.sampled_from(ATOMS),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=16),  # any unicode but surrogates
    st.builds(operator.add, word, st.sampled_from(ATOMS)),
    st.builds(operator.add, st.sampled_from(ATOMS), word),
)
hostile = st.one_of(short_hostile, long_text(5000))
TRAILERS = ("\n", "\r\n", " ", "\t", "#", "\x00", "\n  bind :8081")


def spoiled(plausible: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A plausible value with something before or after it: what a loose grammar lets through."""
    return st.one_of(st.builds(operator.add, plausible, st.sampled_from(TRAILERS)),
                     st.builds(operator.add, st.sampled_from(TRAILERS), plausible))


# Each field mixes plausible values (repeated in `one_of` to weigh them: enough servers and routes
# must be accepted for "accepted values appear exactly" to mean something) with hostile ones.
plausible_name = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?", fullmatch=True)
names = st.one_of(
    plausible_name,
    plausible_name,
    plausible_name,
    plausible_name,
    st.sampled_from(("a" * 63, "a" * 64, "-web", "web-", "web..", "a.b_c-d")),
    spoiled(plausible_name),
    hostile,
).filter(lambda name: name.lower() != "consul")  # the agent's own service
plausible_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,30}", fullmatch=True)
ids = st.one_of(
    plausible_id,
    plausible_id,
    st.sampled_from(("", "a" * 100, "b" * 101, "c" * 256, "d" * 257)),  # "": Consul uses the service name
    spoiled(plausible_id),
    hostile,
)
ADDRESSES = (
    "", "127.0.0.1", "10.0.0.7", "::1", "2001:db8::7", "2001:DB8:0:0:0:0:0:9", "0.0.0.0", "::", "169.254.169.254",
    "fe80::1", "fe80::1%eth0", "2001:db8::1%1\n  bind :8081", "224.0.0.1", "ff02::1", "::ffff:127.0.0.1",
    "::ffff:169.254.169.254", "0127.0.0.1", "1.2.3", "[::1]", "10.0.0.1:80", " 10.0.0.1", "10.0.0.1\n",
    "10.0.0.1 backup", "10.0.0.1 # x", "localhost", "10.0.0.1/24",
)
addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(ADDRESSES),
    spoiled(st.ip_addresses().map(str)),
    hostile,
    st.builds(operator.add, st.sampled_from(("10.0.0.1", "::1", "2001:db8::2%")), st.sampled_from(ATOMS)),
)
ports = st.one_of(
    st.integers(1, 65535),
    # Stored as they are, but for the last: Consul refuses a port it cannot decode as an integer.
    st.sampled_from((0, -1, 65536, 2**31, 2**63 - 1, -(2**63), None, 1, 65535, 443, "80")),
)
hosts = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?(?:\.[a-z0-9]{1,6}){0,3}", fullmatch=True)
paths = st.from_regex(r"/[A-Za-z0-9._~/-]{0,16}", fullmatch=True)
routing_tags = st.one_of(
    st.builds(f"{PREFIX}.host={{}}".format, st.one_of(hosts, hosts, spoiled(hosts), hostile)),
    st.builds(f"{PREFIX}.path={{}}".format, st.one_of(paths, paths, spoiled(paths), hostile)),
    st.builds(f"{PREFIX}.route={{}}{{}}".format, hosts, st.one_of(paths, paths, st.just(""), spoiled(paths), hostile)),
    st.builds(f"{PREFIX}.route={{}}".format, hostile),
)
tags = st.one_of(
    routing_tags,
    routing_tags,
    st.sampled_from((f"{PREFIX}.default", f"{PREFIX}.default ", "LB", f"{PREFIX}.foo=bar", f"{PREFIX}.host", "")),
    hostile,
)
# Meta never reaches the config; Consul refuses keys outside [A-Za-z0-9_-] and values over 512
# characters itself (the whole registration then): hostile values it stores, plain keys.
meta = st.dictionaries(st.sampled_from(("env", "version", "team_1", "owner", "zone")),
                       st.one_of(word, short_hostile, long_text(512)), max_size=2)


@dataclass
class Registration:
    name: str
    id: str
    address: str
    port: Any  # sent as JSON as it is: hostile ports are not always integers
    tags: tuple[str, ...]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> int:
        """Generated values: name, ID, address, port, each tag, each meta value (keys are plain)."""
        return 4 + len(self.tags) + len(self.meta)


@dataclass
class Batch:
    node_address: str
    registrations: list[Registration]


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    # Duplicates are dropped after the draw, not refused during it (which makes Hypothesis draw
    # again, and overrun): Consul treats service names and IDs without case.
    pool = list({name.lower(): name for name in draw(st.lists(names, min_size=3, max_size=20))}.values())
    tag_lists = st.builds(lambda opt_in, extra: ((PREFIX,) if opt_in else ()) + tuple(extra),
                          st.sampled_from((True,) * 6 + (False,)), st.lists(tags, max_size=3))
    registration = st.builds(Registration, st.sampled_from(pool), ids, addresses, ports, tag_lists, meta)
    drawn = draw(st.lists(registration, min_size=50, max_size=70))
    registrations = list({(r.id or r.name).lower(): r for r in drawn}.values())
    node_address = draw(st.one_of(st.sampled_from(("127.0.0.1", "10.1.2.3", "2001:db8::5")), addresses.filter(bool)))
    return Batch(node_address, registrations)


# The issue's own examples, always run first.
ISSUE_EXAMPLES = Batch("127.0.0.1", [
    Registration("web", "web-1", "10.0.0.1", 8080,
                 (PREFIX, f"{PREFIX}.default", f"{PREFIX}.host=web.local\n  bind :8081", f"{PREFIX}.path=/a#b",
                  f'{PREFIX}.route=x.local/"q"'), {"env": "x\n  bind :8081"}),
    Registration("web\n  bind :8081", "evil-1", "10.0.0.2", 80, (PREFIX,)),
    Registration("web # x", "evil-2", "10.0.0.2", 80, (PREFIX,)),
    Registration("web", "web 2 # x", "10.0.0.3 backup", 80, (PREFIX,)),
    Registration("web", "web-3", "10.0.0.4", 80,
                 (PREFIX, f"{PREFIX}.host=caf\u00e9.local", f"{PREFIX}.host={'a' * 300}")),
    Registration("web", "web-4\n", "::ffff:169.254.169.254", 80, (PREFIX,)),
    Registration("web", "web-5", "fe80::1%eth0", 80, (PREFIX,)),
    Registration("web", "web-6", "10.0.0.6\n  bind :8081", 80, (PREFIX,)),
    Registration("api", "'quoted'", "2001:db8::1", 443, (PREFIX, f'{PREFIX}.path="/x"', f"{PREFIX}.path=/v2 ")),
    Registration("api", "api-2", "", 65536, (PREFIX, f"{PREFIX}.route=api.local/v2")),
    Registration("x" * 5000, "long-1", "10.0.0.9", 80, (PREFIX,)),
    # Holes found before: a trailing line break, zones, IPv4-mapped link-local addresses.
    Registration("api\n", "nl-1", "10.0.0.10", 80, (PREFIX,)),
    Registration("api", "nl-2\n", "10.0.0.11\n", 80, (PREFIX, f"{PREFIX}.host=nl.local\n", f"{PREFIX}.path=/nl\n")),
    Registration("api", "zone-1", "fe80::1%1\n    bind :8081", 80, (PREFIX,)),
    Registration("api", "mapped-1", "::ffff:a9fe:a9fe", 80, (PREFIX,)),
])


# --------------------------------------------------------------------------------------------
# What the grammar (discovery.model) makes of what Consul stores


def accepts(check: Callable[[Any], object], value: Any) -> bool:
    try:
        check(value)
    except InvalidValue:
        return False
    return True


def routing(tags: set[str]) -> tuple[set[Route], set[str]]:
    """Routes a service's tags ask for (README: lb.host=, lb.path=, lb.route=), and the values refused."""
    routes: set[Route] = set()
    refused: set[str] = set()
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key.startswith(f"{PREFIX}."):
            continue
        kind = key.removeprefix(f"{PREFIX}.")
        host, slash, rest = value.partition("/")
        parts = {"host": (value, None), "path": (None, value), "route": (host, slash + rest if slash else None)}
        try:
            if kind not in parts:
                raise InvalidValue(f"unknown key {kind!r}")
            routes.add(Route(*parts[kind]))
        except InvalidValue:
            refused.add(value)
    return routes, refused


@dataclass
class Expected:
    servers: dict[str, set[str]] = field(default_factory=dict)  # backend -> its server lines
    routes: set[tuple[str, str | None, str | None]] = field(default_factory=set)  # backend, host, path
    default: str = "no_service"
    refused: set[str] = field(default_factory=set)  # values the grammar refuses: none may be written


def expect(catalog: dict[str, list[str]], health: dict[str, list[dict[str, Any]]]) -> Expected:
    """The config's catalog-dependent parts for what Consul answers: `catalog/services` (names and
    the union of their tags) and `health/service/<name>?passing` for each opted-in name."""
    expected = Expected()
    defaults = []
    for name, tag_list in sorted(catalog.items()):
        tags = set(tag_list or ())
        if PREFIX not in tags:
            continue
        if not accepts(model.service_name, name):
            expected.refused.add(name)
            continue
        backend = f"be_{name}"
        routes, refused = routing(tags)
        expected.routes |= {(backend, r.host, r.path) for r in routes}
        expected.refused |= refused
        if f"{PREFIX}.default" in tags:
            defaults.append(backend)
        expected.servers[backend] = set()
        for entry in health[name]:
            service, node = entry["Service"], entry["Node"]
            address = service["Address"] or node["Address"]  # Consul: no service address, the node's
            if model.server_name(service["ID"]) != service["ID"]:
                expected.refused.add(service["ID"])
            if not accepts(model.address, address):
                expected.refused.add(address)
            try:
                instance = model.Instance(name, service["ID"], address, service["Port"])
            except InvalidValue:
                continue
            expected.servers[backend].add(f"    server {instance.server_name} {instance.endpoint} {SERVER_OPTIONS}")
    if defaults:
        expected.default = defaults[0]  # the first by name (README)
    return expected


# --------------------------------------------------------------------------------------------
# What the watcher wrote, read with strict patterns of our own

SERVER = re.compile(rf"    server [A-Za-z0-9][A-Za-z0-9_.:-]{{0,99}} (?:([0-9.]{{7,15}})|\[([0-9a-f:]{{2,39}})\]):"
                    rf"([1-9][0-9]{{0,4}}) {re.escape(SERVER_OPTIONS)}")
HOST_ACL = r"\{ req\.hdr\(host\),field\(1,:\) -i ([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?) \}"
PATH_ACL = r"\{ path_beg (/[A-Za-z0-9._~/-]{0,200}) \}"
USE = re.compile(rf"    use_backend (be_[A-Za-z0-9_.-]{{1,63}}) if (?:{HOST_ACL} {PATH_ACL}|{HOST_ACL}|{PATH_ACL})")
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) *[a-z_.]+: .*")


def sections(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The comment lines before the first section, and each section's header with its lines."""
    preamble: list[str] = []
    found: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        if not found and (line.startswith("#") or line[0].isspace()):
            preamble.append(line)
        elif line[0].isspace():
            found[-1][1].append(line)
        else:
            found.append((line, []))
    return preamble, found


def unicast(host: str, port: str) -> bool:
    """An endpoint written in canonical form, a unicast address that is neither link-local nor
    IPv4-mapped, a port in range."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    return (str(ip) == host and not (ip.is_unspecified or ip.is_multicast or ip.is_link_local or mapped)
            and 1 <= int(port) <= 65535)


def check(text: str, baseline: str, expected: Expected) -> tuple[list[str], list[str]]:
    """Every way `text` differs from what it must be, and its lines that carry accepted values."""
    problems: list[str] = []
    accepted: list[str] = []
    if odd := sorted({c for c in text if not (" " <= c <= "~" or c == "\n")}):
        problems.append(f"characters outside printable ASCII: {odd!r}")
    preamble, found = sections(text)
    base_preamble, base_found = sections(baseline)
    count = len(expected.servers)
    if preamble != [re.sub(r"from \d+ service", f"from {count} service", base_preamble[0]), *base_preamble[1:]]:
        problems.append(f"header changed: {preamble!r}")
    headers = [header for header, _ in found]
    backends = [h.removeprefix("backend ") for h in headers if h.startswith("backend be_")]
    if sorted(backends) != sorted(expected.servers):
        problems.append(f"backends {backends!r}, want {sorted(expected.servers)!r}")
    skeleton = [h for h in headers if not h.startswith("backend be_")]
    no_service = expected.default == "no_service"
    if skeleton != [h for h, _ in base_found if no_service or h != "backend no_service"]:
        problems.append(f"sections {skeleton!r}, want the baseline's {[h for h, _ in base_found]!r}")
    base_bodies = dict(base_found)
    servers: dict[str, set[str]] = {}
    routes: set[tuple[str, str | None, str | None]] = set()
    defaults: list[str] = []
    for header, body in found:
        if header.startswith("backend be_"):
            backend = header.removeprefix("backend ")
            if body[:1] != ["    balance roundrobin"]:
                problems.append(f"{backend}: first line {body[:1]!r}, want balance roundrobin")
            lines = [] if body[1:] == [NO_INSTANCE] else body[1:]
            for line in lines:
                match = SERVER.fullmatch(line)
                if match is None or not unicast(match[1] or match[2], match[3]):
                    problems.append(f"{backend}: line outside the grammar: {line[:300]!r}")
                else:
                    accepted.append(line)
            if len(set(lines)) != len(lines):
                problems.append(f"{backend}: a server line twice")
            servers[backend] = set(lines)
        elif header == "frontend http":
            rest = []
            for line in body:
                if line.startswith("    use_backend "):
                    match = USE.fullmatch(line)
                    if match is None:
                        problems.append(f"use_backend line outside the grammar: {line[:300]!r}")
                        continue
                    routes.add((match[1], match[2] or match[4], match[3] or match[5]))
                    accepted.append(line)
                elif line.startswith("    default_backend "):
                    defaults.append(line)
                else:
                    rest.append(line)
            if rest != [line for line in base_bodies[header] if not line.startswith("    default_backend ")]:
                problems.append(f"frontend http changed: {rest!r}")
        elif body != base_bodies.get(header):
            problems.append(f"{header} changed: {body!r}")
    if defaults != [f"    default_backend {expected.default}"]:
        problems.append(f"default_backend lines {defaults!r}, want {expected.default!r}")
    for backend in sorted(servers.keys() | expected.servers.keys()):
        extra = servers.get(backend, set()) - expected.servers.get(backend, set())
        missing = expected.servers.get(backend, set()) - servers.get(backend, set())
        if extra or missing:
            problems.append(f"{backend}: servers missing {sorted(missing)[:5]!r}, unexpected {sorted(extra)[:5]!r}")
    if routes != expected.routes:
        problems.append(f"routes missing {sorted(expected.routes - routes, key=str)[:5]!r}, "
                        f"unexpected {sorted(routes - expected.routes, key=str)[:5]!r}")
    return problems, accepted


def leaks(text: str, baseline: str, accepted: list[str], refused: set[str]) -> list[str]:
    """Pieces of refused values (each of their lines) found in the file anywhere but inside the
    baseline or a line that carries accepted values."""
    allowed = baseline + "\n" + "\n".join(accepted)
    found = set()
    for value in refused:
        for piece in re.split(r"[\r\n\x00]", value):
            if piece.strip() and piece in text and piece not in allowed:
                found.add(piece[:100])
    return sorted(found)


# --------------------------------------------------------------------------------------------
# Consul and the watcher


class ConsulHTTP:
    """Plain HTTP to Consul: the exact JSON in (py-consul would coerce values), the status out."""

    def __init__(self, address: str) -> None:
        self.port = urllib.parse.urlsplit(address).port or 8500

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        connection = HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body))
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
            return response.status, json.loads(text) if response.status == 200 else text
        finally:
            connection.close()

    def register(self, node: str, node_address: str, r: Registration) -> bool:
        service = {"Service": r.name, "ID": r.id, "Address": r.address, "Port": r.port, "Tags": list(r.tags),
                   "Meta": r.meta}
        status, _ = self.call("PUT", "/v1/catalog/register", {"Node": node, "Address": node_address,
                                                              "Service": service})
        return status == 200

    def read_back(self) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
        """What the watcher is told: the services with their tags, and the passing instances of each
        name it can route (the others it refuses before asking)."""
        status, catalog = self.call("GET", "/v1/catalog/services")
        assert status == 200, catalog
        health = {}
        for name, tags in catalog.items():
            if PREFIX in (tags or ()) and accepts(model.service_name, name):
                quoted = urllib.parse.quote(name, safe="")
                status, health[name] = self.call("GET", f"/v1/health/service/{quoted}?passing")
                assert status == 200, health[name]
        return catalog, health


@dataclass
class Lab:
    consul: ConsulHTTP
    address: str
    directory: Path
    baseline: str = ""
    nodes: Iterator[int] = field(default_factory=itertools.count)

    @property
    def output(self) -> Path:
        return self.directory / "haproxy.cfg"

    def render_once(self) -> str:
        """One `--once` run of the real watcher: render, `haproxy -c`, write (no HAProxy runs)."""
        d = self.directory
        result = subprocess.run(
            [sys.executable, "-m", "discovery.watch", "--once", "--consul", self.address, "--output", str(self.output),
             "--master-socket", str(d / "master.sock"), "--runtime-socket", str(d / "admin.sock"),
             "--http-bind", "127.0.0.1:8080", "--stats-bind", "127.0.0.1:1936", "--listen", "off"],
            capture_output=True, text=True, errors="replace", timeout=60,
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, f"watcher --once exited {result.returncode}:\n{log[-3000:]}"
        forged = [line for line in log.split("\n") if line and not LOG_RECORD.fullmatch(line)]
        assert not forged, f"log lines that are not log records (a value not logged quoted?): {forged[:3]!r}"
        return self.output.read_text()

    def run(self, batch: Batch) -> None:
        node = f"hostile-{next(self.nodes)}"
        with ThreadPoolExecutor(8) as pool:
            stored = list(pool.map(lambda r: self.consul.register(node, batch.node_address, r), batch.registrations))
        tally(batch, stored)
        try:
            expected = expect(*self.consul.read_back())
            text = self.render_once()
            haproxy_check(self.output)
            TALLY["servers"] += sum(map(len, expected.servers.values()))
            TALLY["routes"] += len(expected.routes)
            problems, accepted = check(text, self.baseline, expected)
            assert not problems, "\n".join(problems[:20])
            leaked = leaks(text, self.baseline, accepted, expected.refused)
            assert not leaked, f"refused values reached the config: {leaked[:10]!r}"
        finally:
            status, answer = self.consul.call("PUT", "/v1/catalog/deregister", {"Node": node})
            assert status == 200, answer


def haproxy_check(path: Path) -> None:
    result = subprocess.run([require("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"haproxy -c refuses {path}:\n{result.stdout}{result.stderr}"


def tally(batch: Batch, stored: list[bool]) -> None:
    """Count every generated value by its verdict: refused by Consul (the whole registration),
    accepted or refused by the grammar, or ignored (meta and tags that mean nothing to the watcher)."""
    TALLY["batches"] += 1
    TALLY["generated"] += 1
    TALLY["accepted" if accepts(model.address, batch.node_address) else "refused"] += 1
    for r, ok in zip(batch.registrations, stored, strict=True):
        TALLY["registrations"] += 1
        TALLY["generated"] += r.values
        if not ok:
            TALLY["consul"] += r.values
            continue
        service_id = r.id or r.name
        verdicts = [accepts(model.service_name, r.name), model.server_name(service_id) == service_id,
                    accepts(model.address, r.address or batch.node_address),
                    accepts(model.port, 0 if r.port is None else r.port)]
        for tag in r.tags:
            routes, refused = routing({tag})
            if tag in (PREFIX, f"{PREFIX}.default") or routes or refused:
                verdicts.append(tag in (PREFIX, f"{PREFIX}.default") or bool(routes))
            else:
                TALLY["ignored"] += 1
        TALLY["ignored"] += len(r.meta)
        TALLY["accepted"] += sum(verdicts)
        TALLY["refused"] += len(verdicts) - sum(verdicts)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("hostile")
    with consul_dev(directory) as agent:
        lab = Lab(ConsulHTTP(agent.address), agent.address, directory)
        (directory / "stats-password").write_text("hostile-suite\n")  # else the first run makes one, and says so
        lab.baseline = lab.render_once()  # the empty catalog's config
        haproxy_check(lab.output)
        yield lab


# --------------------------------------------------------------------------------------------
# The tests


def test_hostile_values_change_nothing_but_accepted_server_and_route_lines(lab: Lab) -> None:
    @settings(max_examples=BATCHES, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate),  # no shrinking: every example costs real processes
              suppress_health_check=list(HealthCheck))
    @given(batch=batches())
    @example(batch=ISSUE_EXAMPLES)
    def one_batch(batch: Batch) -> None:
        lab.run(batch)

    one_batch()
    assert TALLY["generated"] >= WANTED, summary()


def test_the_checker_sees_what_an_injection_would_change(lab: Lab) -> None:
    """The checks above can fail: a good config passes them, and each edit a leaked value could
    make is reported (no process beyond the baseline)."""
    server = f"    server web-1 10.0.0.1:80 {SERVER_OPTIONS}"
    use = "    use_backend be_web if { req.hdr(host),field(1,:) -i a.example }"
    good = re.sub(r"from \d+ service", "from 1 service", lab.baseline).replace(
        "    default_backend no_service\n", f"{use}\n    default_backend be_web\n")
    good = re.sub(r"\nbackend no_service\n.*?\n\n", "\n", good, flags=re.S)
    good += f"\nbackend be_web\n    balance roundrobin\n{server}\n"
    expected = Expected({"be_web": {server}}, {("be_web", "a.example", None)}, "be_web", {"evil value", "a b"})
    assert check(good, lab.baseline, expected)[0] == []
    assert leaks(good, lab.baseline, check(good, lab.baseline, expected)[1], expected.refused) == []
    injected = {
        "a directive in a backend": good.replace(server, f"{server}\n    bind :8081"),
        "a directive in the frontend": good.replace("    option forwardfor\n", "    option forwardfor\n  bind :8081\n"),
        "a new section": good + "backend evil\n    server x 10.0.0.2:80\n",
        "a split server line": good.replace(server, f"    server web-1\n 10.0.0.1:80 {SERVER_OPTIONS}"),
        "a zone in an address": good.replace("10.0.0.1:80", "[fe80::1%1]:80"),
        "an IPv4-mapped address": good.replace("10.0.0.1:80", "[::ffff:a9fe:a9fe]:80"),
        "a comment after a server": good.replace(server, f"{server} # x"),
        "a second word in a host": good.replace("-i a.example }", "-i a.example b }"),
        "a non-ASCII character": good.replace("a.example", "\u0430.example"),
        "a second default": good.replace("    default_backend be_web\n",
                                         "    default_backend be_web\n    default_backend no_service\n"),
        "an unexpected server": good.replace(server, f"{server}\n    server web-2 10.0.0.2:80 {SERVER_OPTIONS}"),
        "a line break": good.replace("a.example }", "a.example }\r"),
    }
    for what, bad in injected.items():
        assert check(bad, lab.baseline, expected)[0], f"the checker misses {what}"
    leaked = good.replace("    stats enable\n", "    stats enable evil value\n")
    assert leaks(leaked, lab.baseline, check(leaked, lab.baseline, expected)[1], expected.refused) == ["evil value"]
