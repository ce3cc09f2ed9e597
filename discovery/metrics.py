"""Prometheus metrics of the watcher and the registrator, and the small HTTP server that exposes
them (`/metrics`), with `/health` and, for the watcher, `/status`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# --- watcher
CONSUL_INDEX = Gauge("discovery_consul_index", "Last X-Consul-Index seen, per blocking query", ["query"])
CONSUL_LAST_ANSWER = Gauge("discovery_consul_last_answer_timestamp_seconds",
                           "When Consul last answered a blocking query (staleness = now - this)", ["query"])
CONSUL_ERRORS = Counter("discovery_consul_errors_total", "Failed Consul requests (retried)", ["query"])
STALE_ANSWERS = Counter("discovery_consul_stale_answers_total",
                        "Stale reads older than --max-stale, asked again from the leader", ["path"])
CHANGES_SEEN = Counter("discovery_changes_seen_total", "Catalog snapshots that differed from the previous one")
CHANGES_APPLIED = Counter("discovery_changes_applied_total", "Changes applied to HAProxy, by method", ["method"])
APPLY_SECONDS = Histogram(
    "discovery_apply_seconds", "Time to apply one change (render, Runtime API or reload, write), by method",
    ["method"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
APPLY_ERRORS = Counter("discovery_apply_errors_total", "Changes not applied (last good config kept), by cause",
                       ["cause"])
INSTANCES = Gauge("discovery_instances", "Passing instances routed, per service", ["service"])
DRAINING = Gauge("discovery_draining_servers", "Servers draining before removal")
SHRINKS_HELD = Gauge("discovery_shrinks_held", "Services whose large loss of instances waits for confirmation")
REFUSED = Counter("discovery_refused_values_total", "Values from Consul refused as invalid, by kind", ["kind"])

# --- registrator
REGISTRATIONS = Counter("discovery_registrations_total", "Services registered in Consul", ["ready"])
DEREGISTRATIONS = Counter("discovery_deregistrations_total", "Services deregistered from Consul", ["why"])
DOCKER_EVENTS = Counter("discovery_docker_events_total", "Container events handled, by action", ["action"])
REGISTRATOR_ERRORS = Counter("discovery_registrator_errors_total", "Failed Docker or Consul operations (retried)",
                             ["side"])


def app(status: Callable[[], dict[str, Any]] | None = None) -> web.Application:
    """`/metrics` (Prometheus text format), `/health`, and `/status` when `status` is given."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/health", health)
    if status is not None:
        async def show_status(_: web.Request) -> web.Response:
            return web.json_response(status(), dumps=lambda data: json.dumps(data, indent=2, default=str))

        application.router.add_get("/status", show_status)
    return application


class ListenError(Exception):
    """The metrics address cannot be listened on (in use, not ours): a fatal start-up error."""


async def serve(application: web.Application, listen: str) -> web.AppRunner:
    """Start serving on `host:port` (an empty host means every address)."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]") or None, int(port)).start()
    except OSError as error:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {listen} for /metrics: {error} (set --listen, or 'off')") from None
    return runner
