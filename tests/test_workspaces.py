"""Workspaces on a real server: the reference's spellings, int ids, the current workspace,
filtered listings, the CLI, and a store made before workspaces opening with its records in
``default`` (and its labels adopted as workspaces)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import sdk
from broker import names
from broker.connection import connect
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from tests.helpers import make_zip
from tests.test_cli import one_error_line, taskbus

HELLO = make_zip({"main.py": "print('hello')\n"})


@pytest.fixture
def client(nats_url: str) -> Iterator[sdk.Client]:
    with sdk.Client(nats_url) as wl:
        yield wl


def test_default_exists_and_workspaces_are_created_listed_and_got(client: sdk.Client) -> None:
    listed = client.list_workspaces()
    assert [(w.id(), w.name()) for w in listed] == [(1, "default")]
    team = client.create_workspace("team-a")
    assert isinstance(team.id(), int) and team.id() == 2 and team.name() == "team-a"
    assert client.get_workspace("team-a") == team
    assert [w.name() for w in client.list_workspaces()] == ["default", "team-a"]
    text = repr(client.list_workspaces())
    assert text.splitlines()[0].split() == ["id", "name", "created", "at"]
    assert "team-a" in text and "team-a" in client.list_workspaces()._repr_html_()

    with pytest.raises(sdk.WorkspaceNotFound, match="'nowhere'"):
        client.get_workspace("nowhere")
    made = client.get_workspace("nowhere", create_if_not_exist=True)
    assert made.id() == 3 and client.get_workspace("nowhere") == made
    with pytest.raises(sdk.InvalidWorkspace, match="exists already"):
        client.create_workspace("team-a")
    for bad in ("", "has space", "a.b", "_hidden", "x" * 65):
        with pytest.raises(sdk.InvalidWorkspace, match="not a valid workspace name"):
            client.create_workspace(bad)
    with pytest.raises(TypeError) as caught:
        client.create_workspace(7)  # type: ignore[arg-type]
    assert isinstance(caught.value, sdk.InvalidWorkspace)  # "a bad name", and a wrong type


async def test_ids_are_unique_when_clients_create_at_once(nats_url: str) -> None:
    clients = [sdk.AsyncClient(nats_url) for _ in range(4)]
    try:
        made = await asyncio.gather(*(c.create_workspace(f"ws-{i}") for i, c in enumerate(clients)))
        ids = sorted(w.id() for w in made)
        assert ids == [2, 3, 4, 5]
        again = await clients[0].get_workspace("ws-3")
        assert again.id() == next(w.id() for w in made if w.name() == "ws-3")
    finally:
        for c in clients:
            await c.close()


def test_uploads_and_tasks_go_to_the_current_workspace(client: sdk.Client) -> None:
    assert client.get_current_workspace().name() == "default"
    before = client.upload_orchestration(bytes_buffer=HELLO, name="in-default")
    team = client.create_workspace("team-a")
    assert client.set_current_workspace(team).name() == "team-a"
    assert client.get_current_workspace() == team
    orch = client.upload_orchestration(bytes_buffer=HELLO, name="in-team")
    task = orch.run_once("once")
    assert (orch.workspace_name(), orch.workspace_id()) == ("team-a", team.id())
    assert (task.workspace_name(), task.workspace_id()) == ("team-a", team.id())
    assert (before.workspace_name(), before.workspace_id()) == ("default", 1)

    by_name = client.list_orchestrations(workspace_name="team-a")
    assert [o.name() for o in by_name] == ["in-team"]
    assert [o.name() for o in client.list_orchestrations(workspace_id=1)] == ["in-default"]
    assert len(client.list_orchestrations()) == 2
    assert [t.id() for t in client.list_tasks(workspace_id=team.id())] == [task.id()]
    assert client.list_tasks(workspace_name="default") == []
    assert client.list_tasks(False, team.id(), "team-a")[0].id() == task.id()
    rows = repr(client.list_orchestrations()).splitlines()
    assert rows[0].split()[-1] == "workspace"
    assert rows[2].split()[-1] == "default" and rows[3].split()[-1] == "team-a"
    assert repr(client.list_tasks()).splitlines()[2].split()[-1] == "team-a"

    for call in (client.list_orchestrations, client.list_tasks):
        with pytest.raises(sdk.WorkspaceNotFound, match="id 99"):
            call(workspace_id=99)
        with pytest.raises(sdk.WorkspaceNotFound, match="'ghost'"):
            call(workspace_name="ghost")
        with pytest.raises(TypeError, match="workspace_id must be an int") as caught:
            call(workspace_id="2")  # type: ignore[arg-type]
        assert isinstance(caught.value, sdk.TaskbusError)
        with pytest.raises(TypeError, match="workspace_name must be a str"):
            call(workspace_name=2)  # type: ignore[arg-type]
    with pytest.raises(sdk.TaskbusError, match="set_current_workspace"):
        client.set_current_workspace("team-a")  # type: ignore[arg-type]


def test_client_workspace_argument_still_names_the_workspace(nats_url: str) -> None:
    with sdk.Client(nats_url, workspace="legacy") as wl:
        orch = wl.upload_orchestration(bytes_buffer=HELLO)
        assert orch.workspace() == "legacy" and orch.workspace_name() == "legacy"
        assert wl.get_current_workspace().name() == "legacy"
        assert "legacy" in [w.name() for w in wl.list_workspaces()]


async def test_an_old_store_opens_with_its_records_in_default(
    nats_server: EmbeddedServer,
) -> None:
    settings = ConnectSettings(urls=[nats_server.url])
    bus = await connect(settings)
    # A store made before workspaces: no workspaces bucket, records without the field.
    await bus.js.delete_key_value(names.WORKSPACES)
    now = datetime.now(UTC).isoformat()
    old = {
        "id": "5d9a8a6e-0000-4000-8000-000000000001",
        "name": "old",
        "file_name": "old.zip",
        "sha": "0" * 64,
        "size": 1,
        "status": "ready",
        "created_at": now,
        "updated_at": now,
    }
    await bus.orchestrations.put(old["id"], json.dumps(old).encode())
    labelled = {**old, "id": "5d9a8a6e-0000-4000-8000-000000000002", "workspace": "team-x"}
    await bus.orchestrations.put(labelled["id"], json.dumps(labelled).encode())
    await bus.close()

    async with sdk.AsyncClient(nats_server.url) as client:  # provisions, so migrates
        listed = await client.list_workspaces()
        assert [(w.id(), w.name()) for w in listed] == [(1, "default"), (2, "team-x")]
        in_default = await client.list_orchestrations(workspace_name="default")
        assert [o.name() for o in in_default] == ["old"]
        assert in_default[0].workspace_name() == "default"
        assert await in_default[0].workspace_id() == 1
        in_team = await client.list_orchestrations(workspace_id=2)
        assert [o.id() for o in in_team] == [labelled["id"]]


def test_cli_workspaces(nats_url: str) -> None:
    made = taskbus("workspaces", "create", "team-a", "--json", url=nats_url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == "team-a"
    listed = taskbus("workspaces", "--json", url=nats_url)
    assert [(w["id"], w["name"]) for w in json.loads(listed.stdout)] == [
        (1, "default"),
        (2, "team-a"),
    ]
    assert "team-a" in taskbus("workspaces", url=nats_url).stdout
    taken = taskbus("workspaces", "create", "team-a", url=nats_url)
    assert taken.returncode == 2 and "exists already" in one_error_line(taken)


def test_cli_workspace_option_selects_and_filters(nats_url: str, tmp_path: Path) -> None:
    zip_path = tmp_path / "hello.zip"
    zip_path.write_bytes(HELLO)
    assert taskbus("workspaces", "create", "team-a", url=nats_url).returncode == 0
    up = taskbus("upload", str(zip_path), "--workspace", "team-a", "--json", url=nats_url)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["workspace"] == "team-a"
    assert taskbus("upload", str(zip_path), "--name", "plain", url=nats_url).returncode == 0
    listed = taskbus("orchestrations", "--workspace", "team-a", "--json", url=nats_url)
    assert [o["name"] for o in json.loads(listed.stdout)] == ["hello"]
    table = taskbus("orchestrations", url=nats_url).stdout.splitlines()
    assert [row.split()[-1] for row in table[2:]] == ["team-a", "default"]
    run = taskbus("run", "hello", "--name", "t", "--workspace", "team-a", "--json", url=nats_url)
    assert run.returncode == 0, run.stderr
    task_id = json.loads(run.stdout)["id"]
    elsewhere = taskbus("run", "hello", "--name", "t", "--workspace", "default", url=nats_url)
    assert elsewhere.returncode == 2 and "in workspace 'default'" in one_error_line(elsewhere)
    tasks = taskbus("tasks", "--workspace", "team-a", "--json", url=nats_url)
    assert [t["id"] for t in json.loads(tasks.stdout)] == [task_id]
    refused = taskbus("kill", task_id, "--workspace", "default", url=nats_url)
    assert refused.returncode == 2 and "in workspace 'team-a'" in one_error_line(refused)
    unknown = taskbus("upload", str(zip_path), "--workspace", "ghost", url=nats_url)
    assert unknown.returncode == 2 and "No workspace named 'ghost'" in one_error_line(unknown)


def test_listing_workspaces_decodes_workspaces_only(
    client: sdk.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The bucket's id counter and schema mark are no workspaces: a listing skips them
    without a warning about records that do not decode."""
    client.create_workspace("team-a")
    with caplog.at_level(logging.WARNING):
        listed = [w.name() for w in client.list_workspaces()]
    assert listed == ["default", "team-a"]
    assert not [r for r in caplog.records if "does not decode" in r.getMessage()]
