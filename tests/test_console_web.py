"""``python -m console --web``: textual-serve on localhost, one real console per browser tab."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp

from broker.connection import Bus
from broker.server import free_port
from tests.helpers import Daemon
from tests.test_console_support import seed_standard


async def test_web_serves_the_console_on_localhost_only(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    await seed_standard(bus)
    port = free_port()
    start_daemon("console", "--web", "--port", str(port), "--url", nats_url)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(30):
            while True:  # until the server answers
                try:
                    async with http.get(f"{base}/") as response:
                        page = await response.text()
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
        assert "Taskbus console" in page
        # a browser tab: the websocket starts a real console and streams its screen
        seen = b""
        async with http.ws_connect(f"{base}/ws?width=120&height=36") as ws:
            async with asyncio.timeout(30):
                while b"[prod] backup" not in seen or b"connected" not in seen:
                    message = await ws.receive()
                    if message.type == aiohttp.WSMsgType.BINARY:
                        seen += message.data
                    elif message.type != aiohttp.WSMsgType.TEXT:
                        raise AssertionError(f"websocket ended: {message.type}")
    # bound to loopback only (no authentication of its own): the kernel's listening sockets
    assert listening_addresses(port) == {"127.0.0.1"}


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found
