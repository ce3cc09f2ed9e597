import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.tools.test_lab import png
from tools.screenshot import Shot, chromium_command, png_size, proxy_app


def test_png_size_reads_the_ihdr():
    assert png_size(png(1280, 800)) == (1280, 800)
    for data in (b"", b"GIF89a" + b"\0" * 30, png(10, 10)[:20]):
        with pytest.raises(ValueError):
            png_size(data)


def test_a_shot_refuses_what_chromium_should_never_open():
    for url in ("file:///etc/passwd", "https://ha:1936/", "http:///x"):
        with pytest.raises(ValueError):
            Shot("stats", url)
    with pytest.raises(ValueError):
        Shot("../x", "http://ha:1936/")
    with pytest.raises(ValueError):
        Shot("stats", "http://ha:1936/", width=10)


def test_a_shot_is_taken_through_the_proxy_with_its_path_and_query():
    shot = Shot("consul", "http://consul:8500/ui/dc1/services?filter=x")
    assert shot.origin == "http://consul:8500"
    assert shot.through("http://127.0.0.1:9") == "http://127.0.0.1:9/ui/dc1/services?filter=x"


def test_chromium_runs_headless_in_a_new_profile_and_never_phones_home():
    command = chromium_command("http://127.0.0.1:9/", Path("/tmp/s.png"), Path("/tmp/p"), 1280, 800, 2000)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--user-data-dir=/tmp/p", "--window-size=1280,800",
                 "--screenshot=/tmp/s.png"):
        assert flag in command
    assert command[-1] == "http://127.0.0.1:9/"


async def upstream_echo(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path, "query": dict(request.query),
                              "token": request.headers.get("X-Consul-Token"), "host": request.headers.get("Host")},
                             headers={"X-Consul-Index": "42"})


@pytest.mark.parametrize("no_long_polls", [False, True])
async def test_the_proxy_adds_the_headers_and_can_turn_long_polls_into_plain_queries(no_long_polls):
    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", upstream_echo)
    headers = {"X-Consul-Token": "t"}
    async with TestServer(upstream_app) as upstream, \
            TestServer(proxy_app(f"http://127.0.0.1:{upstream.port}", headers, no_long_polls)) as proxy, \
            aiohttp.ClientSession() as session:
        upstream_port = upstream.port
        url = f"http://127.0.0.1:{proxy.port}/v1/health/service/webapp?index=7&wait=5m&dc=a"
        async with session.get(url) as answer:
            body, index = await answer.json(), answer.headers.get("X-Consul-Index")
    assert body["path"] == "/v1/health/service/webapp" and body["token"] == "t"
    assert body["host"] == f"127.0.0.1:{upstream_port}"  # the upstream's own name, not the proxy's
    if no_long_polls:
        assert body["query"] == {"dc": "a"} and index is None
    else:
        assert body["query"] == {"index": "7", "wait": "5m", "dc": "a"} and index == "42"


def test_it_imports_nothing_from_discovery():
    """It runs in the screenshot image, which has no discovery wheel."""
    root = Path(__file__).resolve().parents[3]
    probe = "import sys, tools.screenshot; print(sorted(m for m in sys.modules if m.split('.')[0] == 'discovery'))"
    run = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
