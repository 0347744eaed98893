"""The console's workspaces, connections and refusals, driven with keys against a real
nats-server (an operator-mode one with real role credentials for the refusals)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from textual.containers import VerticalScroll
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Input

from broker import catalog, connections, names, store, workspaces
from broker.authority import Authority
from broker.connection import Bus, connect
from broker.models import ConnectionRecord, OrchestrationRecord, TaskRecord
from broker.roles import Role
from broker.secret_key import SecretKey, new_key_text
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from broker.status import RunStatus, TaskKind
from console.app import TaskbusApp
from console.clock import Clock
from console.screens.connections import ConnectionsScreen
from console.screens.help import HelpScreen
from console.screens.orchestrations import OrchestrationsScreen
from console.screens.runs import RunsScreen
from console.screens.tasks import TasksScreen
from console.screens.upload import UploadScreen
from console.widgets.record_table import RecordTable
from tests.conftest import as_role
from tests.helpers import make_zip
from tests.test_console_support import (
    FROZEN,
    SIZE,
    make_app,
    put_orchestration,
    put_run,
    put_task,
    screen_text,
    settled,
    wait_for,
    wait_loaded,
)

SECRETS = {"host": "db.internal", "password": "hunter2-s3cr3t", "nested": {"token": "tok-999"}}
SECRET_VALUES = ("db.internal", "hunter2-s3cr3t", "tok-999")


def table_keys(app: TaskbusApp) -> list[str]:
    return list(app.screen.query_one(RecordTable).keys)


class Seeded(msgspec.Struct):
    hello: OrchestrationRecord
    team_orch: OrchestrationRecord
    default_task: TaskRecord
    team_task: TaskRecord
    other_task: TaskRecord


async def seed_workspaces(bus: Bus) -> Seeded:
    """``default`` holds hello and one task; ``team-a`` (a name in brackets, for escaping)
    holds its own orchestration and two tasks, one with a run."""
    await workspaces.ensure_default(bus.workspaces)
    await workspaces.create(bus.workspaces, "team-a")
    await workspaces.create(bus.workspaces, "empty-ws")
    hello = await put_orchestration(bus, 1, "hello")
    team = await put_orchestration(bus, 2, "[team] pipeline", workspace="team-a")
    default_task = await put_task(bus, 100, "default job", hello)
    team_task = await put_task(
        bus, 101, "[a] nightly", team, kind=TaskKind.SCHEDULED, schedule="0 2 * * *"
    )
    other_task = await put_task(bus, 102, "team once", team)
    await put_run(bus, team_task, 1000, RunStatus.SUCCESS)
    await put_run(bus, default_task, 1001, RunStatus.FAILURE)
    return Seeded(
        hello=hello,
        team_orch=team,
        default_task=default_task,
        team_task=team_task,
        other_task=other_task,
    )


def connection_names(app: TaskbusApp) -> list[str]:
    """The names of the connections the table shows (rows are keyed by identity)."""
    return [app.state.connections[key].name for key in table_keys(app)]


def rows_by_name(app: TaskbusApp) -> dict[str, str]:
    """The first line that starts with each name: the table's row (a detail pane is below)."""
    rows: dict[str, str] = {}
    for line in screen_text(app).splitlines():
        rows.setdefault(line.split("  ")[0].strip(), line)
    return rows


async def test_workspace_column_and_switcher_filter_every_view(bus: Bus, nats_url: str) -> None:
    data = await seed_workspaces(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await wait_for(pilot, lambda: "workspaces" in app.state.loaded)
        assert isinstance(app.screen, TasksScreen)
        text = screen_text(app)
        assert "Workspace" in text and "3 of 3 tasks" in text
        rows = rows_by_name(app)
        assert "default" in rows["default job"]  # an empty label is the default workspace
        assert "team-a" in rows["[a] nightly"] and "team-a" in rows["team once"]
        assert "workspace team-a" not in text  # all workspaces: nothing narrowed

        # w: all → default → empty-ws → team-a → all (default first, then by name)
        await pilot.press("w")
        await settled(pilot)
        assert table_keys(app) == [data.default_task.key]
        assert "1 of 1 tasks in workspace default" in screen_text(app)
        await pilot.press("w")
        await settled(pilot)
        assert table_keys(app) == []
        assert "No tasks in workspace 'empty-ws'" in screen_text(app)
        await pilot.press("w")
        await settled(pilot)
        assert sorted(table_keys(app)) == sorted([data.team_task.key, data.other_task.key])
        header = screen_text(app).splitlines()[0]
        assert "workspace team-a" in header  # the choice shows in the header

        # The choice holds across views: orchestrations and runs of team-a only.
        await pilot.press("3")
        await settled(pilot)
        assert isinstance(app.screen, OrchestrationsScreen)
        assert table_keys(app) == [data.team_orch.key]
        assert "[team] pipeline" in screen_text(app)  # markup-looking names as written
        assert "team-a" in rows_by_name(app)["[team] pipeline"]
        await pilot.press("2")
        await settled(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert table_keys(app) == [f"{data.team_task.key}.{uid_run(1000)}"]

        # :ws (no name) shows every workspace again; :workspace NAME picks one.
        await run_colon(pilot, "ws")
        assert len(table_keys(app)) == 2
        assert "workspace team-a" not in screen_text(app).splitlines()[0]
        await run_colon(pilot, "workspace default")
        assert table_keys(app) == [f"{data.default_task.key}.{uid_run(1001)}"]
        await pilot.press("3")
        await settled(pilot)
        assert table_keys(app) == [data.hello.key]


async def test_unknown_workspace_is_reported_and_changes_nothing(bus: Bus, nats_url: str) -> None:
    await seed_workspaces(bus)
    notes: list[str] = []
    app = make_app(nats_url)
    async with app.run_test(size=SIZE, message_hook=notes_of(notes)) as pilot:
        await wait_loaded(pilot)
        await run_colon(pilot, "ws nosuch")
        await wait_for(pilot, lambda: any("No workspace named 'nosuch'" in n for n in notes))
        assert "team-a" in notes[-1] and "default" in notes[-1]  # it lists the real ones
        assert app.state.workspace is None and len(table_keys(app)) == 3


async def test_help_lists_the_workspace_key_and_the_new_commands(bus: Bus, nats_url: str) -> None:
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.pause()
        assert "Switch workspace" in screen_text(app)
        app.screen.query_one(VerticalScroll).scroll_end(animate=False)
        await pilot.pause()
        text = screen_text(app)
        assert ":workspace [name]" in text and ":connections [filter]" in text


async def test_upload_goes_to_the_workspace_shown(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    await seed_workspaces(bus)
    good = tmp_path / "good.zip"
    good.write_bytes(make_zip({"main.py": "print('hi')\n"}))
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await run_colon(pilot, "ws team-a")
        await pilot.press("3", "u")
        await wait_for(pilot, lambda: isinstance(app.screen, UploadScreen))
        dialog = app.screen
        assert "to workspace team-a" in screen_text(app)
        dialog.query_one("#path", Input).value = str(good)
        dialog.query_one("#name", Input).value = "team upload"
        await pilot.click("#upload")
        await wait_for(pilot, lambda: isinstance(app.screen, OrchestrationsScreen))
        await wait_for(pilot, lambda: "team upload" in screen_text(app))
        stored = {o.name: o for o in await catalog.list_orchestrations(bus)}
        assert stored["team upload"].workspace == "team-a"


async def test_connections_view_never_shows_a_secret(bus: Bus, nats_url: str) -> None:
    await seed_workspaces(bus)
    key = SecretKey.from_text(new_key_text(), "a test key")
    await connections.create(
        bus, key, name="warehouse", connection_type="postgres", details=SECRETS, workspace="team-a"
    )
    await connections.add(bus, "warehouse", names.DEFAULT_WORKSPACE, key)
    await connections.create(
        bus, key, name="bucket", connection_type="[s3]", details={"k": "AKIA-SECRET"},
        workspace="team-a",
    )  # fmt: skip
    tokens = [
        record.details_token
        for record in (await store.scan(bus, names.CONNECTIONS, ConnectionRecord, "*.*")).values()
    ]
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot)
        await run_colon(pilot, "connections")
        assert isinstance(app.screen, ConnectionsScreen)
        await wait_for(pilot, lambda: "connections" in app.state.loaded)
        await settled(pilot)
        text = screen_text(app)
        rows = rows_by_name(app)
        assert "2 of 2 connections" in text
        assert "postgres" in rows["warehouse"]
        assert "team-a, default" in rows["warehouse"]  # one row, every workspace
        assert "[s3]" in rows["bucket"]  # as written, not parsed as markup
        for secret in (*SECRET_VALUES, "AKIA-SECRET"):
            assert secret not in text
        for token in tokens:
            assert token[:16] not in text
        # The workspace switch narrows connections too: default has only warehouse.
        await run_colon(pilot, "ws default")
        assert connection_names(app) == ["warehouse"]
        # A deleted connection goes away live.
        await connections.delete(bus, "bucket")
        await run_colon(pilot, "ws")
        await wait_for(pilot, lambda: connection_names(app) == ["warehouse"], timeout_s=5)
        for secret in SECRET_VALUES:
            assert secret not in screen_text(app)


async def test_operator_console_kills_and_lists_connections(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    """Under `taskbus up` the console holds the operator credential: it reads everything and
    its actions go through."""
    admin = await connect(as_role(secure_server.url, authority, "admin"))
    try:
        data = await seed_workspaces(admin)
        key = SecretKey.from_text(new_key_text(), "a test key")
        await connections.create(
            admin, key, name="warehouse", connection_type="postgres", details=SECRETS,
            workspace="team-a",
        )  # fmt: skip
        notes: list[str] = []
        app = secure_app(secure_server, authority, "operator")
        async with app.run_test(size=SIZE, message_hook=notes_of(notes)) as pilot:
            await wait_loaded(pilot)
            assert app.screen.query_one(RecordTable).select_key(data.other_task.key)
            await pilot.press("k")
            await pilot.press("right", "enter")  # Cancel is focused: move to Kill
            await wait_for(pilot, lambda: any("Kill requested" in n for n in notes))
            await wait_for(pilot, lambda: app.state.tasks[data.other_task.key].killed)
            await run_colon(pilot, "connections")
            await wait_for(pilot, lambda: connection_names(app) == ["warehouse"])
            assert "hunter2" not in screen_text(app)
    finally:
        await admin.close()


async def test_an_operator_of_one_workspace_sees_only_that_workspace(
    secure_server: EmbeddedServer, authority: Authority, tmp_path: Path
) -> None:
    """The server, not the console, keeps another workspace out of view: an operator granted
    team-a watches team-a's keys only, and the rest never reaches it."""
    admin = await connect(as_role(secure_server.url, authority, "admin"))
    try:
        data = await seed_workspaces(admin)
        creds = authority.issue("team-a-operator", Role.OPERATOR, workspaces=["team-a"])
        settings = ConnectSettings(urls=[secure_server.url], creds_file=str(creds))
        app = TaskbusApp(settings, clock=Clock.frozen(FROZEN), freeze_gc=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_loaded(pilot)
            assert sorted(app.state.tasks) == sorted([data.team_task.key, data.other_task.key])
            assert list(app.state.orchestrations) == [data.team_orch.key]
            assert all(key.startswith("team-a.") for key in app.state.runs)
            assert "default job" not in screen_text(app)
            assert set(app.state.workspaces) == {"team-a"}
    finally:
        await admin.close()


async def test_a_refused_action_is_reported_at_once(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    """A credential whose role may not write tasks (the scheduler's): the kill is refused,
    and the console says what was refused, within a second, and stays up; the connections it
    may not read are explained in their view."""
    admin = await connect(as_role(secure_server.url, authority, "admin"))
    try:
        data = await seed_workspaces(admin)
        notes: list[str] = []
        app = secure_app(secure_server, authority, "scheduler")
        hook = notes_of(notes)
        async with app.run_test(size=SIZE, message_hook=hook, notifications=True) as pilot:
            await wait_loaded(pilot)
            assert app.screen.query_one(RecordTable).select_key(data.other_task.key)
            await pilot.press("k")
            await pilot.press("right", "enter")
            seconds = await wait_for(
                pilot, lambda: any("Permission denied" in n for n in notes), timeout_s=5
            )
            assert seconds < 1.5  # not the refused request's timeout
            refused = next(n for n in notes if "Permission denied" in n)
            assert refused.startswith("Refused: ") and "scheduler credential" in refused
            assert f"may not write the task record {data.other_task.key!r}" in refused
            await wait_for(pilot, lambda: "Permission denied" in screen_text(app))
            assert not app.state.tasks[data.other_task.key].killed
            # Pause is refused the same way; the app stays up and responsive.
            notes.clear()
            assert app.screen.query_one(RecordTable).select_key(data.team_task.key)
            await pilot.press("p")
            await wait_for(pilot, lambda: any("Permission denied" in n for n in notes), 5)
            await run_colon(pilot, "connections")
            await wait_for(pilot, lambda: "connections" in app.state.refused)
            await settled(pilot)
            text = screen_text(app)
            assert "Connections cannot be shown" in text and "may not" in text
            assert app.is_running
    finally:
        await admin.close()


# --- helpers ------------------------------------------------------------------------------
def uid_run(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def notes_of(notes: list[str]) -> object:
    def hook(message: Message) -> None:
        if isinstance(message, Notify):
            notification = message.notification
            notes.append(f"{notification.title}: {notification.message}")

    return hook


def secure_app(server: EmbeddedServer, authority: Authority, role: str) -> TaskbusApp:
    return TaskbusApp(
        as_role(server.url, authority, role), clock=Clock.frozen(FROZEN), freeze_gc=False
    )


async def run_colon(pilot: object, command: str) -> None:
    await pilot.press("colon", *command, "enter")  # type: ignore[attr-defined]
    await settled(pilot)  # type: ignore[arg-type]
