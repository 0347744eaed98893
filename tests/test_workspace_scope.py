"""A workspace is an access boundary the server enforces (SECURITY.md, issue 8 item 4): a user
or operator credential granted some workspaces reaches nothing of another's — not through the
SDK, not through raw requests on the keys and subjects that carry the other workspace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

import sdk
from broker import catalog, connections, logs, names, store, workspaces
from broker.authority import Authority
from broker.connection import Bus, connect
from broker.errors import PermissionDenied
from broker.models import (
    ConnectionRecord,
    ExecutorRecord,
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    encode,
)
from broker.roles import Role
from broker.secret_key import SecretKey, new_key_text
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from broker.status import RunStatus, TaskKind
from executor.uids import can_switch_uids
from tests.conftest import as_role
from tests.helpers import Daemon, make_zip, wait_for_executors
from tests.test_auth import refused

MAIN = "import sdk\nprint('args', sdk.task_args())\n"
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(120)\n"
# Bob's code: its secret constant must never reach another workspace; it prints its arguments.
BOB_MAIN = "import sdk\nBOB_CODE_SECRET = 'bob-code-7731'\nprint('bob ran', sdk.task_args())\n"


@dataclass
class Teams:
    server: EmbeddedServer
    admin: Bus
    alice: Bus  # a user granted team-a only
    bob: Bus  # a user granted team-b only
    alice_creds: str
    bob_orch: OrchestrationRecord
    bob_task: TaskRecord
    bob_run: RunRecord


def issue(authority: Authority, name: str, role: Role, *granted: str) -> str:
    return str(authority.issue(name, role, workspaces=list(granted)))


async def user_bus(server: EmbeddedServer, creds: str) -> Bus:
    return await connect(ConnectSettings(urls=[server.url], creds_file=creds))


async def finished(bus: Bus, task: TaskRecord, timeout_s: float = 90.0) -> RunRecord:
    async with asyncio.timeout(timeout_s):
        async for _, run in store.watch(bus.runs, RunRecord, f"{task.key}.*"):
            if run is not None and run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
                return run
    raise AssertionError("unreachable")


async def stdout(bus: Bus, run: RunRecord) -> str:
    return "\n".join(line.text for line in await logs.read(bus, run))


@pytest.fixture
async def teams(
    secure_server: EmbeddedServer,
    authority: Authority,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> AsyncIterator[Teams]:
    """team-a (alice) and team-b (bob) on one shared executor; bob's task has run there."""
    url = secure_server.url
    admin = await connect(as_role(url, authority, "admin"))
    for name in ("team-a", "team-b"):
        await workspaces.create(admin.workspaces, name)
    # Runs get UIDs of their own where this host allows it (as in production as root).
    uids = "61700-61799" if can_switch_uids() else "none"
    start_daemon(
        "executor", "--url", url, "--creds", str(authority.creds_path("executor")),
        "--run-signing-key", str(authority.run_signing_key), "--run-uids", uids,
        "--work-dir", str(tmp_path / "executor"),
    )  # fmt: skip
    start_daemon(
        "broker.scheduler", "--url", url, "--creds", str(authority.creds_path("scheduler"))
    )
    await wait_for_executors(admin, 1)
    alice_creds = issue(authority, "alice", Role.USER, "team-a")
    bob_creds = issue(authority, "bob", Role.USER, "team-b")
    alice, bob = (
        await user_bus(secure_server, alice_creds),
        await user_bus(secure_server, bob_creds),
    )
    orch = await catalog.upload_orchestration(
        bob, make_zip({"main.py": BOB_MAIN}), name="bob's", file_name="b.zip", workspace="team-b"
    )
    task = await catalog.create_task(
        bob, orch, name="bob once", kind=TaskKind.RUN_ONCE, json_args={"secret": "bob-0042"}
    )
    run = await finished(bob, task)
    assert run.status is RunStatus.SUCCESS, run
    try:
        yield Teams(secure_server, admin, alice, bob, alice_creds, orch, task, run)
    finally:
        for bus in (alice, bob, admin):
            await bus.close()


async def test_a_user_sees_nothing_of_another_workspace_through_the_sdk(teams: Teams) -> None:
    async with sdk.AsyncClient(teams.server.url, creds=teams.alice_creds) as alice:
        assert (await alice.get_current_workspace()).name() == "team-a"  # its only grant
        assert [w.name() for w in await alice.list_workspaces()] == ["team-a"]
        assert list(await alice.list_tasks()) == []
        assert list(await alice.list_orchestrations()) == []
        with pytest.raises(sdk.TaskNotFound):
            await alice.get_task_by_id(teams.bob_task.id)
        with pytest.raises(sdk.TaskbusError):
            await alice.list_tasks(workspace_name="team-b")
    async with sdk.AsyncClient(teams.server.url, "team-b", creds=teams.alice_creds) as alice:
        with pytest.raises(PermissionDenied):
            await alice.upload_orchestration(make_zip({"main.py": ""}), name="x")
    async with sdk.AsyncClient(teams.server.url, "team-a", creds=teams.alice_creds) as alice:
        orch = await alice.upload_orchestration(make_zip({"main.py": MAIN}), name="alice's")
        assert orch.workspace_name() == "team-a"
        assert [o.name() for o in await alice.list_orchestrations()] == ["alice's"]


async def test_raw_requests_on_another_workspaces_keys_are_refused(teams: Teams) -> None:
    alice, bob_task, bob_run = teams.alice, teams.bob_task, teams.bob_run
    assert bob_task.workspace == "team-b"
    reads = {
        "task": store.get(alice.tasks, bob_task.key, TaskRecord),
        "run": store.get(alice.runs, bob_task.run_key(bob_run.run_id), RunRecord),
        "tasks listed": store.scan(alice, names.TASKS, TaskRecord, "team-b.>"),
        "every task listed": store.scan(alice, names.TASKS, TaskRecord, "*.>"),
        "runs listed": store.scan(alice, names.RUNS, RunRecord, ">"),
        "log": alice.js.get_msg(
            names.LOGS_STREAM,
            subject=names.logs_subject("team-b", bob_task.id, bob_run.run_id),
            direct=True,
        ),
        "log by sequence": alice.js.get_msg(names.LOGS_STREAM, seq=1, direct=True),
        "zip": alice.js.get_msg(
            names.ZIPS_STREAM,
            subject=names.zip_subject("team-b", teams.bob_orch.sha, "m"),
            direct=True,
        ),
        "stream info naming every key": alice.js.stream_info(
            names.kv_stream(names.TASKS), subjects_filter=">"
        ),
    }
    for what, action in reads.items():
        error = await refused(alice, action)
        assert "alice" in str(error), (what, error)
    killed = msgspec.structs.replace(bob_task, killed=True)
    for action in (
        store.put(alice.tasks, bob_task.key, killed),
        alice.js.publish(names.zip_subject("team-b", teams.bob_orch.sha, "m"), b"{}"),
        alice.js.publish(names.logs_subject("team-b", bob_task.id, "forged"), b"{}"),
    ):
        await refused(alice, action)
    # Bob's task, run and log are as they were.
    found = await store.get(teams.admin.tasks, bob_task.key, TaskRecord)
    assert found is not None and not found[0].killed
    lines = await logs.read(teams.bob, bob_run)
    assert any("bob-0042" in line.text for line in lines)


async def test_a_task_given_another_workspaces_task_id_cannot_touch_it(teams: Teams) -> None:
    """Ids are chosen by whoever writes a task: one of team-a's with the id of team-b's
    task is another task (keys carry the workspace), and killing it kills only itself."""
    alice, bob_task = teams.alice, teams.bob_task
    clone = msgspec.structs.replace(
        bob_task, workspace="team-a", name="clone", kind=TaskKind.SCHEDULED,
        schedule="0 0 1 1 *", killed=True,
    )  # fmt: skip
    await store.put(alice.tasks, clone.key, clone)
    by_bob = await catalog.get_task(teams.bob, bob_task.id)
    assert by_bob.workspace == "team-b" and not by_bob.killed
    # The record's own workspace field is not trusted: the key's is.
    lying = msgspec.structs.replace(clone, workspace="team-b", killed=False, name="liar")
    await store.put(alice.tasks, clone.key, lying)
    seen = await catalog.get_task(alice, bob_task.id)
    assert seen.name == "liar" and seen.workspace == "team-a"


async def test_credentials_name_their_workspaces(authority: Authority) -> None:
    from broker.errors import CredentialError

    with pytest.raises(CredentialError, match="--all-workspaces"):
        authority.issue("nobody", Role.USER)
    with pytest.raises(CredentialError, match="not a workspace name"):
        authority.issue("wild", Role.USER, workspaces=["a.>"])
    with pytest.raises(CredentialError, match="takes no --workspace"):
        authority.issue("exec", Role.EXECUTOR, workspaces=["team-a"])


async def test_connections_stay_in_their_workspace(
    teams: Teams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each team's connection is out of the other's reach: not listed, not found, and its
    record (encrypted details and all) refused by the server."""
    monkeypatch.setenv(names.ENV_SECRET_KEY, new_key_text())
    key = SecretKey.load()
    for bus, workspace, name in ((teams.alice, "team-a", "db-a"), (teams.bob, "team-b", "db-b")):
        await connections.create(
            bus, key, name=name, connection_type="postgres",
            details={"password": f"{name}-s3cret"}, workspace=workspace,
        )  # fmt: skip
    assert [c.name for c in await connections.list_all(teams.alice)] == ["db-a"]
    with pytest.raises(sdk.ConnectionNotFound):
        await connections.get(teams.alice, "db-b")
    await refused(
        teams.alice,
        store.get(
            teams.alice.connections, names.connection_key("team-b", "db-b"), ConnectionRecord
        ),
    )
    await refused(teams.alice, connections.add(teams.alice, "db-a", "team-b", key))
    async with sdk.AsyncClient(teams.server.url, creds=teams.alice_creds) as alice:
        assert [c.name() for c in await alice.list_connections()] == ["db-a"]
        with pytest.raises(sdk.ConnectionNotFound):
            await alice.get_connection("db-b")


async def test_teams_may_pick_one_connection_name_and_each_keeps_its_own(
    teams: Teams, authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is unique where its creator can see: users who cannot see each other's
    workspaces may each make a "db", and a credential that sees both never mixes them up —
    it lists both, must say which it means, and deleting one leaves the other."""
    monkeypatch.setenv(names.ENV_SECRET_KEY, new_key_text())
    url = teams.server.url
    everyone = issue(authority, "root", Role.USER, "*")
    bob_creds = issue(authority, "bob2", Role.USER, "team-b")
    async with (
        sdk.AsyncClient(url, creds=teams.alice_creds) as alice,
        sdk.AsyncClient(url, creds=bob_creds) as bob,
        sdk.AsyncClient(url, creds=everyone) as root,
    ):
        await alice.create_connection("db", "postgres", {"password": "alice-pw-1234"})
        await bob.create_connection("db", "mysql", {"password": "bob-pw-5678"})
        listed = sorted(
            (c.connection_type(), c.workspace_names()) for c in await root.list_connections()
        )
        assert listed == [("mysql", ["team-b"]), ("postgres", ["team-a"])]
        with pytest.raises(sdk.InvalidConnection, match="team-a, team-b") as caught:
            await root.get_connection("db")  # its current workspace is default: which one?
        assert "set_current_workspace" in str(caught.value)
        root.set_current_workspace(await root.get_workspace("team-a"))  # alice's, then
        with pytest.raises(sdk.InvalidConnection, match="of its own"):  # team-b has its own
            await (await root.get_workspace("team-b")).add_connection("db")
        root.set_current_workspace(await root.get_workspace("team-b"))
        bobs = await root.get_connection("db")
        assert bobs.details() == {"password": "bob-pw-5678"}
        await bobs.delete_connection()
        assert [c.connection_type() for c in await root.list_connections()] == ["postgres"]
        assert (await alice.get_connection("db")).details() == {"password": "alice-pw-1234"}
        with pytest.raises(sdk.ConnectionNotFound):
            await bob.get_connection("db")
        # Alice's, added to team-b by root (now that team-b has none), is one connection.
        await (await root.get_workspace("team-b")).add_connection("db")
        assert (await bob.get_connection("db")).workspace_names() == ["team-a", "team-b"]
        with pytest.raises(sdk.PermissionDenied, match="also added to team-b"):
            await (await alice.get_connection("db")).delete_connection()  # loses nothing
        assert (await bob.get_connection("db")).details() == {"password": "alice-pw-1234"}
        await (await root.get_connection("db")).delete_connection()
        assert await root.list_connections() == []


async def test_executor_heartbeats_name_no_run_of_another_workspace(teams: Teams) -> None:
    """Every user reads the executors' heartbeats (which pools are served): a run of team-b
    shows there as a token only, with neither its workspace nor its ids."""
    sleeper = await catalog.upload_orchestration(
        teams.bob, make_zip({"main.py": SLEEPER}), name="sleeper", file_name="s.zip",
        workspace="team-b",
    )  # fmt: skip
    task = await catalog.create_task(teams.bob, sleeper, name="sleeps", kind=TaskKind.RUN_ONCE)
    async with asyncio.timeout(60):
        async for _, run in store.watch(teams.bob.runs, RunRecord, f"{task.key}.*"):
            if run is not None and run.status is RunStatus.RUNNING:
                break
    try:
        token = names.run_token(task.run_key(run.run_id))
        async with asyncio.timeout(30):  # the next heartbeat lists it
            async for _, beat in store.watch(teams.alice.executors, ExecutorRecord):
                if beat is not None and token in beat.running:
                    break
        beats = await store.scan(teams.alice, names.EXECUTORS, ExecutorRecord)
        seen = b"".join(encode(beat) for beat in beats.values()).decode()
        assert "team-b" not in seen and task.id not in seen and run.run_id not in seen
    finally:
        await catalog.set_task_flags(teams.bob, task, killed=True)
