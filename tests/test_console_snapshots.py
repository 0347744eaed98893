"""Snapshots of the main screens at a fixed size, with a frozen clock and fixed records (the
SVGs live in tests/__snapshots__/; regenerate with --snapshot-update and look at them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot

from broker.connection import connect
from broker.settings import ConnectSettings
from console.app import TaskbusApp
from console.screens.server_down import ServerDownScreen
from console.widgets.log_view import LogView
from console.widgets.record_table import RecordTable
from tests.test_console_support import (
    LOG_LINES,
    SIZE,
    Standard,
    make_app,
    seed_standard,
    settled,
    wait_for,
    wait_loaded,
)

SnapCompare = Callable[..., bool]
SHOWN_URL = "nats://127.0.0.1:4222"  # the header names the server; its port is random here


def app_for(url: str) -> TaskbusApp:
    app = make_app(url)
    app.state.server = SHOWN_URL
    return app


def seed(url: str) -> Standard:
    async def run() -> Standard:
        bus = await connect(ConnectSettings(urls=[url]))
        try:
            return await seed_standard(bus)
        finally:
            await bus.close()

    return asyncio.run(run())


def go(*keys: str, select: str | None = None) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await wait_loaded(pilot)
        if select is not None:
            assert pilot.app.screen.query_one(RecordTable).select_key(select)
        await pilot.press(*keys)
        await settled(pilot)

    return run_before


def test_tasks_screen(snap_compare: SnapCompare, nats_url: str) -> None:
    seed(nats_url)
    assert snap_compare(app_for(nats_url), terminal_size=SIZE, run_before=go())


def test_task_detail_screen(snap_compare: SnapCompare, nats_url: str) -> None:
    data = seed(nats_url)
    run_before = go("enter", select=data.train.key)
    assert snap_compare(app_for(nats_url), terminal_size=SIZE, run_before=run_before)


def test_run_logs_screen(snap_compare: SnapCompare, nats_url: str) -> None:
    data = seed(nats_url)

    async def run_before(pilot: Pilot[Any]) -> None:
        await go("l", select=data.once.key)(pilot)
        view = pilot.app.screen.query_one(LogView)
        await wait_for(pilot, lambda: view.lines_map.count >= LOG_LINES)
        await settled(pilot)

    assert snap_compare(app_for(nats_url), terminal_size=SIZE, run_before=run_before)


def test_orchestrations_screen(snap_compare: SnapCompare, nats_url: str) -> None:
    seed(nats_url)
    assert snap_compare(app_for(nats_url), terminal_size=SIZE, run_before=go("3"))


def test_executors_screen(snap_compare: SnapCompare, nats_url: str) -> None:
    seed(nats_url)
    assert snap_compare(app_for(nats_url), terminal_size=SIZE, run_before=go("4"))


def test_server_down_screen(snap_compare: SnapCompare) -> None:
    # Nothing listens on port 1; one attempt, then a long wait, so the screen holds still.
    app = make_app("nats://127.0.0.1:1", retry_s=3600)

    async def run_before(pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ServerDownScreen))
        await wait_for(pilot, lambda: "refused" in app.state.link_detail)
        screen = pilot.app.screen
        assert isinstance(screen, ServerDownScreen)
        await wait_for(pilot, lambda: bool(screen.query("#message")))  # composed
        screen.update()  # what its own 0.5 s refresh would show
        await pilot.pause()

    assert snap_compare(app, terminal_size=(110, 32), run_before=run_before)
