"""``python -m console --web``: textual-serve on localhost behind a token and an Origin check,
one real console per browser tab, nothing loaded from outside the machine."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.connection import Bus
from broker.server import free_port
from tests.helpers import REPO, Daemon, daemon_env
from tests.test_console_support import seed_standard

URL_LINE = re.compile(r"console at (http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]+))")
EXTERNAL = re.compile(r"""(?:https?:|wss?:)?//(?!(?:127\.0\.0\.1|localhost):\d+/)[^\s"')]+""")


async def printed_url(daemon: Daemon, timeout_s: float = 30.0) -> tuple[str, int, str]:
    """The URL ``console --web`` printed: (url, port, token)."""
    async with asyncio.timeout(timeout_s):
        while (found := URL_LINE.search(daemon.output())) is None:
            assert daemon.process.poll() is None, daemon.output()
            await asyncio.sleep(0.05)
    return found.group(1), int(found.group(2)), found.group(3)


async def status_of(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    async with http.get(url, allow_redirects=False, **kwargs) as response:
        return response.status


async def ws_refused(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(url, **kwargs):
            pass
    return refused.value.status


async def test_web_serves_the_console_on_localhost_only(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    await seed_standard(bus)
    daemon = start_daemon("console", "--web", "--port", str(free_port()), "--url", nats_url)
    url, port, token = await printed_url(daemon)
    base = f"http://127.0.0.1:{port}"
    cookie = {f"taskbus-console-{port}": token}
    own = {"Origin": base}
    # the browser's cookie jar; aiohttp's own refuses cookies of IP addresses unless unsafe
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # the printed URL: a cookie, and the same page without the token in the address bar
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/"
            set_cookie = response.headers["Set-Cookie"]
            assert f"taskbus-console-{port}={token}" in set_cookie
            assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        async with http.get(f"{base}/") as response:
            page = await response.text()
            assert response.status == 200
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert "Taskbus console" in page
        # the page loads nothing from outside the machine, and all it loads is served
        assert EXTERNAL.findall(page) == ["http://www.w3.org/2000/svg"]  # an SVG namespace only
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']|url\("([^"]+)"\)""", page)
        assert len(assets) >= 5  # css, two fonts, script, background image
        for found in assets:
            asset = found[0] or found[1]
            assert asset.startswith(f"{base}/static/"), asset
            async with http.get(asset) as response:
                assert response.status == 200, asset
                if asset.endswith(".css"):
                    css = re.sub(r"/\*.*?\*/", "", await response.text(), flags=re.S)
                    assert EXTERNAL.findall(css) == [], asset  # (its comments cite sites)
        # a browser tab: the websocket starts a real console and streams its screen
        seen = b""
        async with http.ws_connect(f"{base}/ws?width=120&height=36", headers=own) as ws:
            async with asyncio.timeout(30):
                while b"[prod] backup" not in seen or b"connected" not in seen:
                    message = await ws.receive()
                    if message.type == aiohttp.WSMsgType.BINARY:
                        seen += message.data
                    elif message.type != aiohttp.WSMsgType.TEXT:
                        raise AssertionError(f"websocket ended: {message.type}")
        # localhost is the same server: its page points at itself, so the cookie goes along
        async with http.get(f"http://localhost:{port}/", cookies=cookie) as response:
            assert response.status == 200 and f"ws://localhost:{port}/ws" in await response.text()
    # bound to loopback only: the kernel's listening sockets
    assert listening_addresses(port) == {"127.0.0.1"}


async def test_web_refuses_requests_without_the_token_and_other_origins(
    nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon("console", "--web", "--port", str(free_port()), "--url", nats_url)
    _, port, token = await printed_url(daemon)
    base = f"http://127.0.0.1:{port}"
    cookie = {f"taskbus-console-{port}": token}
    jar = {"Cookie": f"taskbus-console-{port}={token}"}  # as a browser sends it
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/static/js/textual.js", "/static/", "/download/x", "/nothing"):
            assert await status_of(http, f"{base}{path}") == 403, path
            assert await status_of(http, f"{base}{path}?token=wrong{token}") == 403, path
            assert await status_of(http, f"{base}{path}", cookies={"x": token}) == 403, path
        assert await status_of(http, f"{base}/static/js/textual.js", cookies=cookie) == 200
        assert await status_of(http, f"{base}/static/js/textual.js?token={token}") == 200
        ws = f"{base}/ws?width=80&height=24"
        assert await ws_refused(http, ws, headers={"Origin": base}) == 403  # no token
        for origin in (
            None, "null", "http://evil.example", f"http://evil.example:{port}",
            f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}",
        ):  # fmt: skip
            headers = {"Origin": origin, **jar} if origin else jar
            assert await ws_refused(http, ws, headers=headers) == 403, origin
        # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        assert await status_of(http, f"{base}/", headers=rebound, cookies=cookie) == 403
        assert await ws_refused(http, ws, headers={**rebound, **jar}) == 403


def test_web_on_a_port_in_use_says_so_in_one_line_and_exits_2(nats_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for argv in (["-m", "console"], ["-m", "console.cli", "console"]):
            result = subprocess.run(
                [sys.executable, *argv, "--web", "--port", str(port), "--url", nats_url],
                env=daemon_env(), cwd=REPO, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert f"127.0.0.1:{port}: the port is in use; choose another with --port" in lines[0]


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found
