"""SDK waits survive a server restart: their watches are recreated on reconnect instead of
staying blind until nats-py's ordered consumer notices (many seconds: it waits for missed
heartbeats)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from broker.connection import Bus
from broker.server import EmbeddedServer, ServerSettings
from tests.helpers import Daemon, make_zip


async def watches_exist(bus: Bus, *streams: str) -> None:
    """Until the waiter's KV watches (ordered consumers) exist on the server."""
    async with asyncio.timeout(10):
        for stream in streams:
            # A server-side count: there is nothing to subscribe to, so ask again shortly.
            while not (await bus.js.stream_info(stream)).state.consumer_count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)


@pytest.mark.timeout(90)
async def test_task_wait_spans_a_server_restart(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "nats", port=0)).start()
    try:
        async with sdk.AsyncClient(url=server.url) as wl:
            orch = await wl.upload_orchestration(
                bytes_buffer=make_zip({"main.py": "print('done')\n"}), name="restart"
            )
            task = await orch.run_once(name="across a restart")  # no executor yet: pending
            waiting = asyncio.ensure_future(task.wait())
            await watches_exist(await wl.session.bus(), "KV_taskbus_runs", "KV_taskbus_tasks")
            server.stop()
            server = EmbeddedServer(server.settings.__class__(
                data_dir=server.settings.data_dir, port=server.port)).start()  # fmt: skip
            start_daemon("executor", "--url", server.url, "--work-dir", str(tmp_path / "ex"))
            # Well inside the ~19 s a stale watcher would stay blind.
            assert await asyncio.wait_for(waiting, timeout=12) == "success"
    finally:
        server.stop()
