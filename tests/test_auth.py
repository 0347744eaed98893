"""Identities and permissions, enforced by a real nats-server in operator mode: every role
authenticates as itself and may do only what its role's template in ``broker.roles`` gives
it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js import api

from broker import catalog, dispatch, names, store, tokens
from broker.authority import Authority
from broker.connection import Bus, connect
from broker.errors import NotConnected, PermissionDenied, SchedulerUnavailable
from broker.models import ExecutorRecord, RunRecord, TaskRecord
from broker.roles import Role
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings
from broker.status import RunStatus, TaskKind
from tests.conftest import as_role
from tests.helpers import REPO, Daemon, daemon_env, make_zip
from tests.test_cli import one_error_line
from tests.test_executor import upload, wait_run

NOW = datetime(2026, 12, 1, tzinfo=UTC)
TASK_ID = "7f1c1f2e-0000-4000-8000-000000000001"
OTHER_TASK_ID = "7f1c1f2e-0000-4000-8000-000000000002"
TASK_KEY = f"default.{TASK_ID}"  # keys carry the workspace first
OTHER_KEY = f"default.{OTHER_TASK_ID}"
RUN_KEY = f"default.{TASK_ID}.r1"


def task(task_id: str, **changes: object) -> TaskRecord:
    values: dict[str, object] = {
        "id": task_id,
        "name": "nightly",
        "orchestration_id": "o1",
        "kind": TaskKind.RUN_ONCE,
        "json_args": {"secret": "victim-args"},
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return TaskRecord(**values)  # type: ignore[arg-type]


async def role_bus(server: EmbeddedServer, authority: Authority, role: str) -> Bus:
    return await connect(as_role(server.url, authority, role))


async def refused(bus: Bus, action: object) -> PermissionDenied:
    """Run ``action`` (a coroutine) expecting the server to refuse it."""
    with pytest.raises(PermissionDenied) as caught:
        async with bus.refusals():
            await action  # type: ignore[misc]
    return caught.value


async def subscribed(bus: Bus, subject: str) -> None:
    """Subscribe and wait for the server to have seen it: its refusal arrives before the first
    flush's answer, and nats-py hands it to error_cb in a task that has run by the second's.
    Shielded: nats-py's read loop breaks on the answer to a flush that was cancelled."""
    await bus.nc.subscribe(subject)
    await asyncio.shield(bus.nc.flush())
    await asyncio.shield(bus.nc.flush())


async def test_a_client_without_a_credential_is_told_which_one_to_use(
    secure_server: EmbeddedServer,
) -> None:
    with pytest.raises(NotConnected) as caught:
        await connect(ConnectSettings(urls=[secure_server.url]))
    message = str(caught.value)
    assert "requires a credential" in message
    assert "--creds" in message and "user.creds" in message


async def test_a_credential_of_another_cluster_is_refused(
    secure_server: EmbeddedServer, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path / "elsewhere").ensure_local()
    with pytest.raises(NotConnected) as caught:
        await connect(as_role(secure_server.url, stranger, "user"))
    assert "refused the credential" in str(caught.value)
    assert str(stranger.creds_path("user")) in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "not a creds file at all\n",
        "-----BEGIN NATS USER JWT-----\nnot-a-jwt\n------END NATS USER JWT------\n",
        "-----BEGIN NATS USER JWT-----\n",
    ],
    ids=["no-jwt", "garbage-jwt", "cut-short"],
)
async def test_a_file_that_is_no_credential_is_named(
    secure_server: EmbeddedServer, tmp_path: Path, text: str
) -> None:
    """Issue 8, bad input: a wrong credential is a NotConnected naming it, from the SDK and
    the CLI alike (one line, no traceback, the usage exit code: trying again cannot help)."""
    garbage = tmp_path / "garbage.creds"
    garbage.write_text(text)
    with pytest.raises(NotConnected) as caught:
        await connect(ConnectSettings(urls=[secure_server.url], creds_file=str(garbage)))
    assert str(garbage) in str(caught.value) and "not a NATS .creds file" in str(caught.value)
    cli = await asyncio.to_thread(
        taskbus, "tasks", "--url", secure_server.url, "--creds", str(garbage)
    )
    assert cli.returncode == 2 and str(garbage) in one_error_line(cli)  # usage: not retried


async def test_an_expired_credential_is_named(
    secure_server: EmbeddedServer, authority: Authority, tmp_path: Path
) -> None:
    old = authority.issue(
        "old", Role.USER, workspaces=["*"], expires_at=time.time() - 5, path=tmp_path / "old.creds"
    )
    with pytest.raises(NotConnected) as caught:
        await connect(ConnectSettings(urls=[secure_server.url], creds_file=str(old)))
    assert "expired" in str(caught.value) and str(old) in str(caught.value)


async def test_the_scheduler_cannot_write_a_task_spec(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    admin = await role_bus(secure_server, authority, "admin")
    scheduler = await role_bus(secure_server, authority, "scheduler")
    try:
        await store.put(admin.tasks, TASK_KEY, task(TASK_ID))
        assert await store.get(scheduler.tasks, TASK_KEY, TaskRecord) is not None  # may read
        error = await refused(
            scheduler, store.put(scheduler.tasks, TASK_KEY, task(TASK_ID, killed=True))
        )
        assert "task record" in str(error) and "scheduler" in str(error)
        current = await store.get(admin.tasks, TASK_KEY, TaskRecord)
        assert current is not None and not current[0].killed
    finally:
        await scheduler.close()
        await admin.close()


async def test_a_user_cannot_delete_a_stream_or_take_run_requests(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    user = await role_bus(secure_server, authority, "user")
    try:
        error = await refused(user, user.js.delete_stream("TASKBUS_LOGS"))
        assert "delete or purge the stream" in str(error)
        await refused(user, user.js.delete_key_value("taskbus_tasks"))
        pull = await user.js.pull_subscribe_bind(consumer="runq_default", stream="TASKBUS_RUNQ")
        await refused(user, pull.fetch(1, timeout=5))
    finally:
        await user.close()
    admin = await role_bus(secure_server, authority, "admin")
    try:
        assert (await admin.js.stream_info("TASKBUS_LOGS")).config.name == "TASKBUS_LOGS"
    finally:
        await admin.close()


async def test_an_operator_can_kill_a_task_but_not_fake_an_executor(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    admin = await role_bus(secure_server, authority, "admin")
    operator = await role_bus(secure_server, authority, "operator")
    try:
        await store.put(admin.tasks, TASK_KEY, task(TASK_ID))
        killed = await store.update(
            operator.tasks, TASK_KEY, TaskRecord, lambda t: task(TASK_ID, killed=True)
        )
        assert killed is not None and killed.killed
        fake = ExecutorRecord(
            id="fake", host="h", pid=1, pool="default", slots=1, started_at=NOW, heartbeat_at=NOW
        )
        await refused(operator, store.put(operator.executors, "fake", fake))
        await refused(operator, operator.js.delete_stream("KV_taskbus_runs"))
    finally:
        await operator.close()
        await admin.close()


async def test_users_and_operators_cannot_forge_runs_or_requests(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    """A run record's status is written by its executor only: users and operators may not
    create or rewrite one, nor put a request on the run queue (the scheduler starts the runs
    they ask for)."""
    admin = await role_bus(secure_server, authority, "admin")
    run = RunRecord(task_id=TASK_ID, run_id="r1", status=RunStatus.RUNNING, created_at=NOW)
    await store.put(admin.runs, RUN_KEY, run)
    forged = RunRecord(task_id=TASK_ID, run_id="r1", status=RunStatus.SUCCESS, created_at=NOW)
    try:
        for role in ("user", "operator"):
            bus = await role_bus(secure_server, authority, role)
            try:
                error = await refused(bus, store.put(bus.runs, RUN_KEY, forged))
                assert "write the run record" in str(error) and role in str(error)
                await refused(bus, store.create(bus.runs, f"default.{TASK_ID}.r2", forged))
                await refused(bus, bus.js.publish(names.runq_subject("default"), b"{}"))
            finally:
                await bus.close()
        current = await store.get(admin.runs, RUN_KEY, RunRecord)
        assert current is not None and current[0].status is RunStatus.RUNNING
    finally:
        await admin.close()


async def test_a_users_run_once_and_run_now_are_started_by_the_scheduler(
    secure_server: EmbeddedServer,
    authority: Authority,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    user = await role_bus(secure_server, authority, "user")
    try:
        orch = await upload(user, {"main.py": "print('started by the scheduler')"}, settled=False)
        task = await catalog.create_task(user, orch, name="once", kind=TaskKind.RUN_ONCE)
        assert await catalog.runs_of(user, task.id) == []  # nobody started it yet
        with pytest.raises(SchedulerUnavailable, match="taskbus scheduler"):
            await catalog.run_now(user, task.id, wait_s=1)
        start_daemon(
            "broker.scheduler", "--url", secure_server.url,
            "--creds", str(authority.creds_path("scheduler")),
        )  # fmt: skip
        first = await wait_run(user, task.id, lambda run: True, timeout_s=30)
        assert first.run_id == dispatch.run_id_for(task.id, task.created_at)
        again = await catalog.run_now(user, task.id)  # asked of the scheduler, which starts it
        assert again.run_id != first.run_id and again.status is RunStatus.PENDING
        runs = await catalog.runs_of(user, task.id)
        assert {r.run_id for r in runs} >= {first.run_id, again.run_id}
    finally:
        await user.close()


async def test_an_executor_cannot_write_task_specs_or_provision(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    executor = await role_bus(secure_server, authority, "executor")
    try:
        await refused(executor, store.put(executor.tasks, TASK_KEY, task(TASK_ID)))
        await refused(executor, executor.js.delete_stream("TASKBUS_RUNQ"))
        await refused(executor, executor.js.add_stream(api.StreamConfig(name="X", subjects=["x"])))
    finally:
        await executor.close()


async def test_a_run_credential_reads_only_its_own_task_orchestration_and_run(
    secure_server: EmbeddedServer, authority: Authority, tmp_path: Path
) -> None:
    admin = await role_bus(secure_server, authority, "admin")
    await store.put(admin.tasks, TASK_KEY, task(TASK_ID))
    await store.put(admin.tasks, OTHER_KEY, task(OTHER_TASK_ID))
    run = RunRecord(task_id=TASK_ID, run_id="r1", status=RunStatus.RUNNING, created_at=NOW)
    await store.put(admin.runs, RUN_KEY, run)
    creds = tmp_path / "run.creds"
    creds.write_text(
        authority.run_signer().mint(
            task_id=TASK_ID,
            run_id="r1",
            orchestration_id="o1",
            workspace="default",
            expires_at=time.time() + 60,
        )
    )
    mine = await connect(ConnectSettings(urls=[secure_server.url], creds_file=str(creds)))
    try:
        own = await store.get(mine.tasks, TASK_KEY, TaskRecord)
        assert own is not None and own[0].json_args == {"secret": "victim-args"}
        assert await store.get(mine.runs, RUN_KEY, RunRecord) is not None
        assert list(await store.scan(mine, names.RUNS, RunRecord, f"default.{TASK_ID}.*")) == [
            RUN_KEY
        ]
        await refused(mine, store.scan(mine, names.RUNS, RunRecord, f"default.{OTHER_TASK_ID}.*"))
        await refused(mine, store.scan(mine, names.RUNS, RunRecord, ">"))
        error = await refused(mine, store.get(mine.tasks, OTHER_KEY, TaskRecord))
        assert OTHER_TASK_ID in str(error) and "run credential" in str(error)
        await refused(mine, store.put(mine.tasks, TASK_KEY, task(TASK_ID, killed=True)))
        await refused(mine, store.put(mine.runs, RUN_KEY, run))
        await refused(mine, mine.js.delete_stream("TASKBUS_LOGS"))
        await refused(mine, subscribed(mine, "_INBOX.>"))
    finally:
        await mine.close()
        await admin.close()


async def test_a_run_credential_stops_working_when_it_expires(
    secure_server: EmbeddedServer, authority: Authority, tmp_path: Path
) -> None:
    creds = tmp_path / "run.creds"
    creds.write_text(
        authority.run_signer().mint(
            task_id=TASK_ID,
            run_id="r1",
            orchestration_id="o1",
            workspace="default",
            expires_at=time.time() - 1,
        )
    )
    with pytest.raises(NotConnected, match="expired"):
        await connect(ConnectSettings(urls=[secure_server.url], creds_file=str(creds)))


def test_credential_files_are_private(authority: Authority) -> None:
    files = [p for p in authority.root.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files)
    assert authority.root.stat().st_mode & 0o077 == 0


async def test_uploading_through_the_sdk_works_with_a_user_credential(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    import sdk

    client = sdk.AsyncClient(
        settings=ConnectSettings(
            urls=[secure_server.url], creds_file=str(authority.creds_path("user"))
        )
    )
    async with client:
        orch = await client.upload_orchestration(bytes_buffer=make_zip({"main.py": "print(1)"}))
        assert (await client.get_orchestration(orch.id())).id() == orch.id()


async def test_only_users_and_executors_read_connections(
    secure_server: EmbeddedServer, authority: Authority, tmp_path: Path
) -> None:
    """Users manage connections, executors read them for their runs; the
    scheduler never reads one, and a run reads its file, not the bucket."""
    from broker import connections
    from broker.models import ConnectionRecord
    from broker.secret_key import SecretKey, new_key_text

    key = SecretKey.from_text(new_key_text(), "a test key")
    user = await role_bus(secure_server, authority, "user")
    executor = await role_bus(secure_server, authority, "executor")
    scheduler = await role_bus(secure_server, authority, "scheduler")
    creds = tmp_path / "run.creds"
    creds.write_text(
        authority.run_signer().mint(
            task_id=TASK_ID,
            run_id="r1",
            orchestration_id="o1",
            workspace="default",
            expires_at=time.time() + 60,
        )
    )
    run = await connect(ConnectSettings(urls=[secure_server.url], creds_file=str(creds)))
    try:
        made = await connections.create(
            user, key, name="db", connection_type="pg", details={"pw": "x"}, workspace="default"
        )
        assert made.workspaces == ["default"]
        found = await store.get(executor.connections, "default.db", ConnectionRecord)
        assert found is not None and key.open(
            found[0].details_token, name="db", workspaces=["default"]
        ) == {"pw": "x"}
        error = await refused(
            scheduler, store.get(scheduler.connections, "default.db", ConnectionRecord)
        )
        assert "read the connection record 'default.db'" in str(error)
        assert "scheduler" in str(error)
        error = await refused(run, store.get(run.connections, "default.db", ConnectionRecord))
        assert "connection record" in str(error) and "run credential" in str(error)
        await refused(executor, store.put(executor.connections, "default.db", made))
    finally:
        for bus in (run, scheduler, executor, user):
            await bus.close()


async def test_a_store_made_without_authentication_opens_with_everything_in_it(
    tmp_path: Path, authority: Authority
) -> None:
    """An existing data directory (before authentication) keeps its records when `taskbus up`
    turns authentication on: its JetStream store moves into the TASKBUS account."""
    data_dir = tmp_path / "old"
    with EmbeddedServer(ServerSettings(data_dir=data_dir, port=0)) as old:
        bus = await connect(ConnectSettings(urls=[old.url]))
        await store.put(bus.tasks, TASK_KEY, task(TASK_ID))
        await bus.close()
    settings = ServerSettings(data_dir=data_dir, port=0, config_file=authority.server_config)
    server = EmbeddedServer(settings)
    assert authority.adopt_store(server.store_dir)
    assert not authority.adopt_store(server.store_dir)  # once only
    with server:
        user = await connect(as_role(server.url, authority, "user"))
        try:
            found = await store.get(user.tasks, TASK_KEY, TaskRecord)
            assert found is not None and found[0].json_args == {"secret": "victim-args"}
        finally:
            await user.close()


def taskbus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        capture_output=True, text=True, cwd=REPO, env=env or daemon_env(), timeout=60,
    )  # fmt: skip


def test_auth_init_and_user_prepare_a_cluster_from_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "auth"
    made = taskbus("auth", "init", "--dir", str(root), "--tls", "nats1,nats2")
    assert made.returncode == 0, made.stderr
    assert "server config" in made.stdout and (root / "tls" / "ca.pem").is_file()
    again = taskbus("auth", "init", "--dir", str(root))
    assert again.returncode == 2 and "already holds an authority" in again.stderr
    issued = taskbus(
        "auth", "user", "alice", "--role", "user", "--workspace", "fraud", "--dir", str(root)
    )
    assert issued.returncode == 0, issued.stderr
    creds = tokens.read_creds(issued.stdout.strip())
    assert (creds.name, creds.role, creds.tag("workspace")) == ("alice", "user", "fraud")
    assert Path(issued.stdout.strip()).stat().st_mode & 0o077 == 0
    bad = taskbus("auth", "user", "a.b", "--role", "user", "--dir", str(root))
    assert bad.returncode == 2 and "cannot be used" in bad.stderr

    # A server with that config requires the credentials; `provision` makes the resources.
    authority = Authority(root)
    settings = ServerSettings(data_dir=tmp_path / "s", port=0, config_file=authority.server_config)
    with EmbeddedServer(settings) as server:
        provisioned = taskbus(
            "provision", "--url", server.url, "--creds", str(authority.creds_path("admin"))
        )
        assert provisioned.returncode == 0, provisioned.stderr
        as_user = taskbus("tasks", "--url", server.url, "--creds", issued.stdout.strip(), "--json")
        assert as_user.returncode == 0 and json.loads(as_user.stdout) == [], as_user.stderr
        refused = taskbus("tasks", "--url", server.url)  # no credential here
        assert refused.returncode == 3 and "requires a credential" in refused.stderr
        wrong = taskbus(
            "provision", "--url", server.url, "--creds", str(authority.creds_path("user"))
        )
        assert wrong.returncode != 0 and "Traceback" not in wrong.stderr


async def test_a_daemon_with_another_role_s_credential_says_so_and_exits_2(
    secure_server: EmbeddedServer, authority: Authority, tmp_path: Path
) -> None:
    for module in ("executor", "broker.scheduler"):
        args = [sys.executable, "-m", module, "--url", secure_server.url]
        args += ["--creds", str(authority.creds_path("user"))]
        if module == "executor":
            args += ["--work-dir", str(tmp_path / "work")]
        done = await asyncio.to_thread(
            subprocess.run,
            args, capture_output=True, text=True, cwd=REPO, env=daemon_env(), timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, (module, done.stderr)
        assert "the user credential 'user' may not" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


async def test_the_async_client_is_told_at_once_too(
    secure_server: EmbeddedServer, authority: Authority
) -> None:
    """An ``AsyncClient`` whose credential may not do something gets ``PermissionDenied`` as
    fast as the sync client, not the refused request's timeout."""
    import sdk

    settings = as_role(secure_server.url, authority, "scheduler")
    async with sdk.AsyncClient(settings=settings) as client:
        async with asyncio.timeout(2):
            with pytest.raises(sdk.PermissionDenied, match="scheduler"):
                await client.upload_orchestration(bytes_buffer=make_zip({"main.py": "print(1)"}))
        assert await client.list_tasks() == []  # what it may do still works


def test_a_server_not_provisioned_yet_is_named_as_such(
    tmp_path: Path, authority: Authority
) -> None:
    """A cluster before `taskbus provision`: a user's command says to provision, once, with
    the admin credential, not that the connection was lost."""
    settings = ServerSettings(
        data_dir=tmp_path / "bare", port=0, config_file=authority.server_config
    )
    with EmbeddedServer(settings) as server:
        result = taskbus("tasks", "--creds", str(authority.creds_path("user")), "--url", server.url)
    assert result.returncode == 3
    line = one_error_line(result)
    assert "no Taskbus streams yet" in line and "taskbus provision" in line
