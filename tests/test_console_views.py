"""The console's views and actions, driven with keys against a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.command import CommandList, CommandPalette
from textual.widgets import Button, Input

from broker import catalog, store
from broker.connection import Bus
from broker.models import OrchestrationRecord, RunRecord, TaskRecord
from broker.server import EmbeddedServer, ServerSettings, free_port
from broker.status import RunStatus, TaskKind
from console.screens.base import MIN_REDRAW_S
from console.screens.confirm import ConfirmScreen
from console.screens.executors import ExecutorsScreen
from console.screens.help import HelpScreen
from console.screens.orchestrations import OrchestrationsScreen
from console.screens.runs import RunsScreen
from console.screens.server_down import ServerDownScreen
from console.screens.task_detail import TaskDetailScreen
from console.screens.tasks import TasksScreen
from console.screens.upload import UploadScreen
from console.state import Link
from console.widgets.filter_bar import FilterBar
from console.widgets.key_bar import KeyBar
from console.widgets.record_table import RecordTable
from tests.helpers import make_zip
from tests.test_console_support import (
    SIZE,
    make_app,
    put_executor,
    screen_text,
    seed_standard,
    settled,
    uid,
    wait_for,
    wait_loaded,
)


def table_of(app: object) -> RecordTable:
    return app.screen.query_one(RecordTable)  # type: ignore[attr-defined,no-any-return]


def palette_hits(app: object) -> int:
    screen = app.screen  # type: ignore[attr-defined]
    if not isinstance(screen, CommandPalette):
        return 0
    return screen.query_one(CommandList).option_count


async def task_record(bus: Bus, task_id: str) -> TaskRecord:
    found = await store.get(bus.tasks, task_id, TaskRecord)
    assert found is not None
    return found[0]


async def test_tasks_view_shows_derived_status_and_names_as_written(
    bus: Bus, nats_url: str
) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        assert isinstance(app.screen, TasksScreen)
        text = screen_text(app)
        assert "[prod] backup" in text  # markup-looking names show as written
        assert "connected" in text and "dropped 0" in text
        assert "7 of 7 tasks" in text
        rows = {line.split("  ")[0].strip(): line for line in text.splitlines()}
        assert "failure 59m18s ago" in rows["nightly-train"]  # it ended 42 s after its start
        assert "Scheduled Run" in rows["weekly report"] and "paused" in rows["weekly report"]
        assert "in 5m00s" in rows["[prod] backup"]  # next fire of */5 at 12:00:00 → 12:05
        assert "Temporary Run" in rows["fresh"] and "pending" in rows["fresh"]
        # newest update first
        assert table_of(app).keys[0] == data.fresh.key


async def test_live_update_appears_without_refresh(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        task = await catalog.create_task(bus, data.hello, name="brand new", kind=TaskKind.RUN_ONCE)
        seconds = await wait_for(pilot, lambda: "brand new" in screen_text(app), timeout_s=5)
        # a redraw had just happened, so this one waits out the 4 Hz limit, no more
        assert seconds < MIN_REDRAW_S + 0.15
        # A run status change (written as the executor would) shows in the same row.
        runs = await catalog.runs_of(bus, task)
        running = RunRecord(
            task_id=task.id,
            run_id=runs[0].run_id,
            status=RunStatus.FAILURE,
            exit_code=3,
            created_at=runs[0].created_at,
        )
        await store.put(bus.runs, running.key, running)
        await wait_for(
            pilot,
            lambda: any(
                "brand new" in line and "failed" in line for line in screen_text(app).splitlines()
            ),
            timeout_s=5,
        )


async def test_filter_by_status_inverse_and_clear(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("slash", *"status=failed")
        await settled(pilot)
        assert table_of(app).keys == [data.etl.key]
        assert "1 of 7 tasks" in screen_text(app)
        bar, keys = app.screen.query_one(FilterBar), app.screen.query_one(KeyBar)
        assert bar.region.height == 1 and not bar.region.overlaps(keys.region)  # typing shows
        await pilot.press("enter")  # keeps the filter, back to the table
        assert app.focused is table_of(app)
        await pilot.press("slash", "home", "!", "enter")  # "!status=failed": the inverse
        await settled(pilot)
        assert len(table_of(app).keys) == 6 and data.etl.key not in table_of(app).keys
        await pilot.press("escape")  # clears the filter
        await settled(pilot)
        assert len(table_of(app).keys) == 7
        await pilot.press("slash", *"last=failure", "enter")  # newest run failed
        await settled(pilot)
        assert set(table_of(app).keys) == {data.etl.key, data.train.key}
        await pilot.press("escape")
        await pilot.press("slash", *"backup")  # free text
        await settled(pilot)
        assert table_of(app).keys == [data.backup.key]


async def test_sort_by_column_key_and_header_click(bus: Bus, nats_url: str) -> None:
    await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        table = table_of(app)
        names_of = lambda: [app.state.tasks[k].name for k in table.keys]  # noqa: E731
        await pilot.click(RecordTable, offset=(3, 0))  # the "Name" header
        await settled(pilot)
        assert names_of() == sorted(names_of(), key=str.lower)
        await pilot.click(RecordTable, offset=(3, 0))  # again: reversed
        await settled(pilot)
        assert names_of() == sorted(names_of(), key=str.lower, reverse=True)
        await pilot.press("o")  # next column: Type
        await settled(pilot)
        kinds = [app.state.tasks[k].kind.label for k in table.keys]
        assert kinds == sorted(kinds, reverse=True)
        assert "sorted by type" in screen_text(app)
        # the mouse: a click moves the cursor, a double click opens the task
        await pilot.click(RecordTable, offset=(5, 3))
        assert table.cursor == 2
        third = table.keys[2]
        await pilot.click(RecordTable, offset=(5, 3), times=2)
        assert isinstance(app.screen, TaskDetailScreen) and app.screen.task_key == third


async def test_kill_asks_with_cancel_focused_and_cancel_does_nothing(
    bus: Bus, nats_url: str
) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        assert table_of(app).select_key(data.backup.key)
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        assert isinstance(app.focused, Button) and app.focused.id == "cancel"
        assert "[prod] backup" in screen_text(app)
        await pilot.press("enter")  # enter on the focused Cancel
        assert isinstance(app.screen, TasksScreen)
        assert not (await task_record(bus, data.backup.key)).killed
        await pilot.press("k", "right", "enter")  # now really kill it
        assert isinstance(app.screen, TasksScreen)
        await wait_for(pilot, lambda: app.state.tasks[data.backup.key].killed)
        assert (await task_record(bus, data.backup.key)).killed
        await settled(pilot)
        # a killed task cannot be killed again: the action is greyed out
        assert app.screen.check_action("kill", ()) is None
        assert app.screen.active_bindings["k"].enabled is False


async def test_run_now_pause_resume_and_greyed_actions(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        table = table_of(app)
        table.select_key(data.fresh.key)
        await pilot.press("r")
        await wait_for(pilot, lambda: app.state.summary(data.fresh.key).newest is not None)
        assert len(await catalog.runs_of(bus, data.fresh)) == 1
        # run-once: pause does not apply (greyed), resume is hidden
        assert app.screen.active_bindings["p"].binding.action == "pause"
        assert app.screen.active_bindings["p"].enabled is False
        table.select_key(data.etl.key)  # run once, finished: nothing left to kill
        await settled(pilot)
        assert app.screen.active_bindings["k"].enabled is False
        table.select_key(data.once.key)  # run once, running: kill applies
        await settled(pilot)
        assert app.screen.active_bindings["k"].enabled is True
        table.select_key(data.backup.key)
        await pilot.press("p")
        await wait_for(pilot, lambda: app.state.tasks[data.backup.key].paused)
        await settled(pilot)
        assert app.screen.active_bindings["p"].binding.action == "resume"
        await pilot.press("p")
        await wait_for(pilot, lambda: not app.state.tasks[data.backup.key].paused)
        assert not (await task_record(bus, data.backup.key)).paused


async def test_task_detail_shows_spec_and_history_newest_first(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        table_of(app).select_key(data.train.key)
        await pilot.press("enter")
        assert isinstance(app.screen, TaskDetailScreen)
        await settled(pilot)
        text = screen_text(app)
        assert "0 2 * * * (UTC)" in text and "2025-03-15 02:00:00" in text  # next fires
        assert '{"n": 101}' in text and "orchestration hello" in text
        runs = table_of(app).keys
        assert runs == [data.failed.run_id, uid(1010)]
        first = next(line for line in text.splitlines() if line.strip().startswith("000003f3"))
        assert "failure" in first and "exit code 1" in first and "42s" in first
        await pilot.press("escape")
        assert isinstance(app.screen, TasksScreen)


async def test_orchestrations_view_and_upload_dialog(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    await seed_standard(bus)
    bad = tmp_path / "nomain.zip"
    bad.write_bytes(make_zip({"lib.py": "x = 1\n"}))
    good = tmp_path / "good.zip"
    good.write_bytes(make_zip({"main.py": "print('hi')\n"}))
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("3")
        assert isinstance(app.screen, OrchestrationsScreen)
        await settled(pilot)
        text = screen_text(app)
        assert "[bad] deps" in text and "nosuchpkg==9 [/bold]" in text  # literal, no markup
        await pilot.press("u")
        assert isinstance(app.screen, UploadScreen)
        dialog = app.screen
        error = lambda: str(dialog.query_one("#error").render())  # noqa: E731
        await pilot.press(*"nowhere/", "enter", "enter")  # a relative path that does not exist
        await wait_for(pilot, lambda: "No file at" in error())
        dialog.query_one("#path", Input).value = str(bad)
        await pilot.click("#upload")
        await wait_for(pilot, lambda: "main.py" in error())
        assert isinstance(app.screen, UploadScreen)  # stays open on errors
        dialog.query_one("#path", Input).value = str(good)
        dialog.query_one("#name", Input).value = "fresh upload"
        button = dialog.query_one("#upload", Button)
        await wait_for(pilot, lambda: not button.has_class("-active"))  # the press animation
        await pilot.click("#upload")
        await wait_for(pilot, lambda: isinstance(app.screen, OrchestrationsScreen))
        await wait_for(pilot, lambda: "fresh upload" in screen_text(app))
        stored = await catalog.list_orchestrations(bus)
        assert any(o.name == "fresh upload" and o.file_name == "good.zip" for o in stored)


async def test_executors_alive_lost_and_back(bus: Bus, nats_url: str) -> None:
    await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("4")
        assert isinstance(app.screen, ExecutorsScreen)
        await settled(pilot)
        lines = {line.split()[0]: line for line in screen_text(app).splitlines() if "host-" in line}
        assert "1/4" in lines["host-a"] and "alive" in lines["host-a"]
        assert "hello once/" in lines["host-a"]
        assert "30s ago" in lines["host-b"] and "lost" in lines["host-b"]
        # the stale heartbeat is red: the row uses the theme's error colour
        table = table_of(app)
        error_colour = table.get_component_rich_style("record-table--bad").color
        strip = table.render_line(1 + table.keys.index("exec-b"))
        heartbeat = [seg for seg in strip if "30s" in seg.text]
        assert heartbeat and all(seg.style and seg.style.color == error_colour for seg in heartbeat)
        await put_executor(bus, "exec-b", "host-b", heartbeat_ago_s=0.5)  # it came back
        await wait_for(
            pilot,
            lambda: any("host-b" in r and "alive" in r for r in screen_text(app).splitlines()),
        )


async def test_command_line_help_and_palette(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("colon", *"runs failed", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        await settled(pilot)
        assert table_of(app).keys == [  # newest first
            f"{data.etl.key}.{uid(1040)}",
            f"{data.train.key}.{data.failed.run_id}",
        ]
        assert "filter: status=failed" in screen_text(app)
        await pilot.press("colon", *"tasks", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TasksScreen))
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.pause()
        text = screen_text(app)
        assert "Kill" in text and "Run now" in text and ":runs" in text
        await pilot.press("escape")
        await pilot.press("ctrl+p", *"view: executors")
        await wait_for(pilot, lambda: palette_hits(app) > 0)  # it searches in a worker
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ExecutorsScreen))
        # every key of the screen is in the palette too: "Kill" on the Tasks view
        await pilot.press("1", "ctrl+p", *"kill")
        await wait_for(pilot, lambda: palette_hits(app) > 0)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await pilot.press("colon", *"theme nord", "enter")
        assert app.theme == "nord"


async def test_server_down_screen_then_connects_when_a_server_starts(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    app = make_app(url, retry_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ServerDownScreen))
        await wait_for(pilot, lambda: url in screen_text(app))
        text = screen_text(app)
        assert "taskbus up" in text and "taskbus server" in text and "Retrying" in text
        assert "connection refused" in text
        server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "late", port=port))
        await asyncio.to_thread(server.start)
        try:
            await wait_for(pilot, lambda: isinstance(app.screen, TasksScreen), timeout_s=15)
            await wait_for(pilot, lambda: app.state.link is Link.CONNECTED)
            assert "connected" in screen_text(app)
        finally:
            await asyncio.to_thread(server.stop)


async def test_recovers_after_a_nats_restart_without_user_action(
    bus: Bus, nats_url: str, nats_server: EmbeddedServer
) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await asyncio.to_thread(nats_server.stop)
        await wait_for(pilot, lambda: app.state.link is Link.RECONNECTING)
        await settled(pilot)
        assert "reconnecting" in screen_text(app)
        await asyncio.to_thread(nats_server.start)
        await wait_for(pilot, lambda: app.state.link is Link.CONNECTED, timeout_s=20)
        # a change made after the restart reaches the screen: the watches were recreated
        await wait_for(pilot, lambda: bus.connected, timeout_s=20)
        record = await catalog.create_task(
            bus, OrchestrationRecord(**_fields(data.hello)), name="after restart",
            kind=TaskKind.SCHEDULED, schedule="* * * * *",
        )  # fmt: skip
        await wait_for(pilot, lambda: "after restart" in screen_text(app), timeout_s=10)
        assert record.key in app.state.tasks
        assert len(app.state.tasks) == 8  # nothing lost, nothing doubled


def _fields(record: OrchestrationRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__struct_fields__}
