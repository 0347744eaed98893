"""What a new user ran into, checked as they see it (150x45, a real nats-server): ctrl+c quits,
an empty filter says so, the view keys land on their view, ids and file names are readable,
the key bar fits, the upload dialog names its default, the header names the server."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from broker.connection import Bus
from broker.status import OrchestrationStatus
from console.app import TaskbusApp
from console.commands import VIEWS
from console.format import SEP, display_url
from console.screens.orchestrations import OrchestrationsScreen
from console.screens.run_logs import RunLogsScreen
from console.screens.runs import RunsScreen
from console.screens.tasks import TasksScreen
from console.screens.upload import UploadScreen
from console.widgets.key_bar import Entry, fit
from console.widgets.record_table import RecordTable
from tests.test_console_support import (
    make_app,
    put_executor,
    put_orchestration,
    screen_text,
    seed_standard,
    settled,
    wait_for,
    wait_loaded,
)

WIDE = (150, 45)


def lines(app: TaskbusApp) -> list[str]:
    return screen_text(app).splitlines()


def table_of(app: TaskbusApp) -> RecordTable:
    return app.screen.query_one(RecordTable)


async def test_ctrl_c_quits_from_a_view_a_filter_and_a_dialog(bus: Bus, nats_url: str) -> None:
    await seed_standard(bus)
    for keys in ((), ("slash", "x"), ("3", "u", "a")):
        app = make_app(nats_url)
        async with app.run_test(size=WIDE) as pilot:
            await wait_loaded(pilot)
            await pilot.press(*keys)
            await pilot.pause()
            assert app.return_code is None  # still running
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda app=app: app.return_code == 0, timeout_s=5)
            assert "ctrl+q" not in screen_text(app)  # not Textual's "press ctrl+q" notice


async def test_an_empty_result_says_why(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=WIDE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("slash", *"zzz", "enter")
        await settled(pilot)
        text = screen_text(app)
        assert "0 of 7 tasks" in text
        assert "No task matches the filter 'zzz' (esc clears it)." in text
        assert "No tasks yet" not in text
        await pilot.press("escape")
        await settled(pilot)
        assert "7 of 7 tasks" in screen_text(app)
        # Enter on an orchestration without tasks lists its (no) tasks.
        await pilot.press("3")
        await settled(pilot)
        assert table_of(app).select_key(data.broken.key)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TasksScreen))
        await settled(pilot)
        text = screen_text(app)
        assert "Orchestration '[bad] deps' has no tasks yet (esc shows every task)." in text
        assert "No task matches" not in text


async def test_view_keys_land_on_the_top_level_view(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=WIDE) as pilot:
        await wait_loaded(pilot)
        assert table_of(app).select_key(data.once.key)
        await pilot.press("enter", "l")  # Tasks, hello once, its logs
        await wait_for(pilot, lambda: isinstance(app.screen, RunLogsScreen))
        await pilot.press("colon", *"runs failed", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("1")
        await wait_for(pilot, lambda: isinstance(app.screen, TasksScreen))
        await settled(pilot)
        assert lines(app)[0].startswith(f" Taskbus{SEP}Tasks  ")
        await pilot.press("slash", *"status=failed", "enter")
        await settled(pilot)
        assert table_of(app).keys == [data.etl.key]  # a task filter, not a log search
        assert "1 of 7 tasks" in screen_text(app)
        # ":tasks" from a task's detail lands on the list too (and clears the filter).
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, TasksScreen))
        await pilot.press("colon", *"tasks", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TasksScreen))
        await settled(pilot)
        assert "7 of 7 tasks" in screen_text(app)


async def test_executor_ids_and_file_names_are_readable(bus: Bus, nats_url: str) -> None:
    await put_executor(bus, "vm-31434-987d", "vm")
    await put_executor(bus, "build-runner-eu-west-3-long-host-77123-a1b2", "build")
    await put_orchestration(
        bus, 7, "with_requirements_example", status=OrchestrationStatus.PACKAGING
    )
    app = make_app(nats_url)
    async with app.run_test(size=WIDE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("4")
        await wait_for(pilot, lambda: "2 of 2 executors" in screen_text(app))
        rows = {line.split()[0]: line for line in lines(app)[2:5] if line.strip()}
        assert "vm-31434-987d " in rows["vm"]
        assert "build-runner-eu-west-3-…" in rows["build"]  # cut, and it says so
        await pilot.press("3")
        await wait_for(pilot, lambda: "1 of 1 orchestrations" in screen_text(app))
        row = lines(app)[2]
        assert "with_requirements_example.zip" in row
        assert "packaging " in row


async def test_key_bar_fits_on_logs_and_filtered_tasks(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=WIDE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("slash", *"hello", "enter")
        await settled(pilot)
        bar = lines(app)[-1]
        assert "esc Clear filter" in bar and "? Help  q Quit" in bar and "…" not in bar
        await pilot.press("escape")
        assert table_of(app).select_key(data.once.key)
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, RunLogsScreen))
        await settled(pilot)
        bar = lines(app)[-1]
        assert "s Streams" in bar and "1-4 Views" in bar and "? Help  q Quit" in bar
        assert "…" not in bar
        await pilot.resize_terminal(90, 45)
        await pilot.pause()
        bar = lines(app)[-1]
        assert "? Help  q Quit" in bar and "esc Back" in bar and "…" not in bar
        await pilot.press("question_mark")  # help still lists every key
        await pilot.pause()
        text = screen_text(app)
        assert "UTC/local" in text and "Command" in text and "Executors" in text


def test_fit_keeps_help_and_quit() -> None:
    def entry(key: str, action: str, description: str) -> Entry:
        return Entry(key, description, True, binding=Binding(key, action, description))

    entries = [
        entry("enter", "select", "Open"),
        *(entry(str(n), f"view('{m}')", m) for n, m in enumerate(VIEWS, 1)),
        entry("colon", "command_line", "Command"),
        entry("x", "other", "A long description here"),
        entry("question_mark", "help", "Help"),
        entry("q", "quit", "Quit"),
    ]
    assert fit(entries, 200) == entries
    narrow = fit(entries, 40)
    assert sum(e.width for e in narrow) <= 40
    assert [e.description for e in narrow][-3:] == ["Views", "Help", "Quit"]
    assert [e.description for e in fit(entries, 15)] == ["Help", "Quit"]


async def test_upload_name_placeholder_follows_the_file(bus: Bus, nats_url: str) -> None:
    app = make_app(nats_url)
    async with app.run_test(size=WIDE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, OrchestrationsScreen))
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, UploadScreen))
        await pilot.pause()
        name = app.screen.query_one("#name", Input)
        assert name.placeholder == "the file name without .zip"
        assert "hello" not in screen_text(app).split("Name (optional")[1]
        await pilot.press(*"/srv/jobs/nightly_train.zip")
        await pilot.pause()
        assert name.placeholder == "nightly_train"
        assert "nightly_train " in screen_text(app).split("Name (optional")[1]


async def test_header_names_the_server(bus: Bus, nats_url: str) -> None:
    app = make_app(nats_url)
    async with app.run_test(size=WIDE) as pilot:
        await wait_loaded(pilot)
        assert f"● connected {nats_url}  dropped 0" in lines(app)[0]


def test_display_url_hides_credentials() -> None:
    assert display_url("nats://alice:s3cret@10.0.0.5:4222") == "nats://10.0.0.5:4222"
    assert display_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert display_url("tls://token@host") == "tls://host"
    assert display_url("localhost:4222") == "localhost:4222"
