"""Screenshots of web pages with headless Chromium, for the lab report (`tools.lab`).

Runs inside the `screenshot` image on the compose network, so Chromium reaches `ha:1936` and
`consul:8500` directly. That image holds this file and aiohttp, not the `discovery` wheel: import
nothing from `discovery` here. The pages need credentials (the stats page's Basic auth, later a
Consul ACL token): a small reverse proxy on loopback adds them as headers to every request, the
page's own API calls included, so no secret ever appears in a URL, a command line or `docker inspect`.

Reads one JSON job on stdin, `{"shots": [{"name", "url", "headers", "width", "height",
"wait_ms"}]}`, and writes `{name: base64 PNG}` on stdout; Chromium's chatter goes to stderr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Hop-by-hop headers, and those aiohttp recomputes: it decompresses bodies and re-frames them.
SKIP_HEADERS = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length",
                          "content-encoding", "upgrade", "proxy-authorization", "te", "trailer"})


@dataclass(frozen=True)
class Shot:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    width: int = 1280
    height: int = 800
    # Chromium's virtual time budget: how long the page's scripts may run before the capture.
    wait_ms: int = 2000
    # Turn Consul's blocking queries into plain ones (see proxy_app).
    no_long_polls: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{self.url!r}: want an http:// URL")
        if not self.name.isidentifier():
            raise ValueError(f"{self.name!r}: want an identifier")
        if not (200 <= self.width <= 4000 and 200 <= self.height <= 4000 and 0 <= self.wait_ms <= 60000):
            raise ValueError("size or wait out of range")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def through(self, proxy: str) -> str:
        """The same page, asked of the proxy at `proxy` (`http://127.0.0.1:port`)."""
        parts = urlsplit(self.url)
        return proxy + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def chromium_command(url: str, output: Path, profile: Path, width: int, height: int, wait_ms: int) -> list[str]:
    # Flags from the machine's notes: no sandbox (containers lack user namespaces), a new empty
    # profile each time, and nothing that phones home while the lab runs.
    return ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}", f"--screenshot={output}", url]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; ValueError if `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def proxy_app(upstream: str, headers: dict[str, str], no_long_polls: bool = False) -> web.Application:
    """Forward every request to `upstream` with `headers` added; bodies are read whole.

    `no_long_polls`: Chromium's virtual time stands still while a request is pending, so one
    of Consul's blocking queries (the UI keeps one open per list) would hold the capture for
    minutes. Dropping `index` and `wait` makes each query answer at once, and dropping
    `X-Consul-Index` from answers tells the UI there is nothing to block on."""
    session: aiohttp.ClientSession | None = None

    async def forward(request: web.Request) -> web.StreamResponse:
        assert session is not None
        outgoing = {k: v for k, v in request.headers.items() if k.lower() not in SKIP_HEADERS} | headers
        url = request.rel_url
        if no_long_polls:
            url = url.without_query_params("index", "wait")
        async with session.request(request.method, upstream + url.path_qs, headers=outgoing,
                                   data=await request.read(), allow_redirects=False) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in SKIP_HEADERS
                    and not (no_long_polls and k.lower() == "x-consul-index")}
            return web.Response(status=answer.status, headers=kept, body=body)

    async def open_session(_: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), auto_decompress=True)

    async def close_session(_: web.Application) -> None:
        if session is not None:
            await session.close()

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def take(shot: Shot) -> bytes:
    runner = web.AppRunner(proxy_app(shot.origin, shot.headers, shot.no_long_polls), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with tempfile.TemporaryDirectory() as work:
            output, profile = Path(work) / "shot.png", Path(work) / "profile"
            profile.mkdir()
            process = await asyncio.create_subprocess_exec(
                *chromium_command(shot.through(f"http://127.0.0.1:{port}"), output, profile, shot.width,
                                  shot.height, shot.wait_ms),
                stdout=sys.stderr, stderr=sys.stderr)
            try:
                code = await asyncio.wait_for(process.wait(), timeout=60 + shot.wait_ms / 1000)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise RuntimeError(f"{shot.name}: Chromium did not finish within a minute") from None
            if code != 0 or not output.exists():
                raise RuntimeError(f"{shot.name}: Chromium exited {code} without a screenshot")
            data = output.read_bytes()
            png_size(data)
            return data
    finally:
        await runner.cleanup()


async def main() -> int:
    job = json.load(sys.stdin)
    shots = [Shot(**item) for item in job["shots"]]
    pictures = {shot.name: base64.b64encode(await take(shot)).decode() for shot in shots}
    json.dump(pictures, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
