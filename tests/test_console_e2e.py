"""The console against a real executor: a run goes live on screen, its logs stream in, and a
kill from the console stops it."""

from __future__ import annotations

from broker import catalog
from broker.connection import Bus
from broker.status import RunStatus, TaskKind, TaskStatus
from console.screens.confirm import ConfirmScreen
from console.screens.run_logs import RunLogsScreen
from console.widgets.log_view import LogView
from console.widgets.record_table import RecordTable
from tests.helpers import Daemon, make_zip
from tests.test_console_support import SIZE, make_app, screen_text, settled, wait_for, wait_ready

SCRIPT = """
import sys, time
print("starting [/bold] \\x1b[32mgreen\\x1b[0m", flush=True)
print("to stderr", file=sys.stderr, flush=True)
for i in range(600):
    print(f"tick {i}", flush=True)
    time.sleep(0.05)
"""


async def test_a_real_run_shows_live_and_a_kill_from_the_console_stops_it(
    bus: Bus, nats_url: str, executor: Daemon
) -> None:
    orch = await catalog.upload_orchestration(
        bus, make_zip({"main.py": SCRIPT}), name="ticker", file_name="ticker.zip"
    )
    await wait_ready(bus, orch.id)
    app = make_app(nats_url, frozen=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "ticker" in app.state.orchestration_name(orch.id))
        task = await catalog.create_task(bus, orch, name="[e2e] ticker", kind=TaskKind.RUN_ONCE)
        await wait_for(pilot, lambda: app.state.status_of(task.key) is TaskStatus.STARTED, 30)
        await settled(pilot)
        row = next(line for line in screen_text(app).splitlines() if "[e2e] ticker" in line)
        assert "started" in row and "running" in row
        assert app.screen.query_one(RecordTable).select_key(task.key)
        await pilot.press("l")
        assert isinstance(app.screen, RunLogsScreen)
        view = app.screen.query_one(LogView)
        await wait_for(pilot, lambda: view.lines_map.count > 20, 20)
        await settled(pilot)
        text = screen_text(app)
        assert "starting [/bold] green" in text and "tick " in text and "running" in text
        assert "\x1b" not in text
        await pilot.press("escape")  # back to the tasks, kill it from there
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("right", "enter")
        await wait_for(pilot, lambda: app.state.status_of(task.key) is TaskStatus.KILLED, 30)
        runs = await catalog.runs_of(bus, task)
        assert runs[0].status is RunStatus.KILLED
        await settled(pilot)
        row = next(line for line in screen_text(app).splitlines() if "[e2e] ticker" in line)
        assert "killed" in row
