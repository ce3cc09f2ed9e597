"""Fixtures that start real processes on free loopback ports (see tests/processes.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.processes import ConsulAgent, Watcher, WebApps, consul_dev, watcher_process

pytestmark = pytest.mark.integration


@pytest.fixture
def consul_agent(tmp_path: Path) -> Iterator[ConsulAgent]:
    with consul_dev(tmp_path) as agent:
        yield agent


@pytest.fixture
def webapps() -> Iterator[WebApps]:
    apps = WebApps()
    try:
        yield apps
    finally:
        apps.stop_all()


@pytest.fixture
def start_watcher(tmp_path: Path, consul_agent: ConsulAgent) -> Iterator[Callable[..., Watcher]]:
    with ExitStack() as stack:
        started: list[Watcher] = []

        def start(*extra: str, wait_for_haproxy: bool = True) -> Watcher:
            watcher = stack.enter_context(watcher_process(
                tmp_path, consul_agent.address, *extra, name=f"watch-{len(started)}",
                wait_for_haproxy=wait_for_haproxy))
            started.append(watcher)
            return watcher

        yield start
