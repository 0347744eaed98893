"""A store made before keys carried workspaces (schema 1) opens with everything in it: records,
log lines and zips move to their workspace's keys and subjects on the next provisioning, and
runs pending in the old layout still run (issue 8 item 4)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

import sdk
from broker import archive, catalog, dispatch, migration, names, store, workspaces
from broker.connection import Bus, connect
from broker.models import (
    LogBatch,
    LogLine,
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    WorkspaceIds,
    encode,
    utcnow,
)
from broker.settings import ConnectSettings
from broker.status import RUN_TERMINAL, OrchestrationStatus, RunStatus, TaskKind
from tests.helpers import Daemon, make_zip, wait_for_executors
from tests.test_executor import start_executor, wait_run

MAIN = "import sdk\nprint('migrated', sdk.task_args())\n"


async def write_schema_1(bus: Bus) -> dict[str, object]:
    """Records, logs and a zip as the release before workspace keys wrote them."""
    data = make_zip({"main.py": MAIN})
    sha = archive.sha256(data)
    old_zips = await bus.js.create_object_store(migration.OLD_ARTIFACTS)
    assert isinstance(old_zips, ObjectStore)
    await old_zips.put(sha, data)
    now = utcnow()
    made: dict[str, object] = {"sha": sha}
    for label in ("", "team-a"):
        orch = OrchestrationRecord(
            id=catalog.new_id(), name=f"orch {label or 'default'}", file_name="o.zip", sha=sha,
            size=len(data), entrypoint="main.py", status=OrchestrationStatus.READY,
            workspace=label, created_at=now, updated_at=now,
        )  # fmt: skip
        task = TaskRecord(
            id=catalog.new_id(), name=f"task {label or 'default'}", orchestration_id=orch.id,
            kind=TaskKind.RUN_ONCE, json_args={"in": label or "default"}, workspace=label,
            created_at=now, updated_at=now,
        )  # fmt: skip
        finished = RunRecord(
            task_id=task.id, run_id="r-done", status=RunStatus.SUCCESS, exit_code=0,
            created_at=now, finished_at=now,
        )  # fmt: skip
        pending = RunRecord(task_id=task.id, run_id=dispatch.run_id_for(task.id), created_at=now)
        await store.put(bus.orchestrations, orch.id, orch)
        await store.put(bus.tasks, task.id, task)
        await store.put(bus.runs, f"{task.id}.{finished.run_id}", finished)
        await store.put(bus.runs, f"{task.id}.{pending.run_id}", pending)
        lines = [LogLine(seq=1, ts=now, stream="stdout", text=f"old line of {task.name}")]
        batch = LogBatch(task_id=task.id, run_id=finished.run_id, lines=lines, eof=True)
        await bus.js.publish(f"taskbus.logs.{task.id}.{finished.run_id}", encode(batch))
        made[label or "default"] = (orch, task, pending)
    await bus.workspaces.put(migration.OLD_WORKSPACE_IDS, encode(WorkspaceIds(last_id=7)))
    await bus.workspaces.purge(names.SCHEMA_KEY)  # a store from before the schema mark
    return made


async def test_an_old_store_opens_with_everything_in_it(
    tmp_path: Path, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    first = await connect(ConnectSettings(urls=[nats_url]))
    try:
        await workspaces.create(first.workspaces, "team-a")
        made = await write_schema_1(first)
    finally:
        await first.close()

    bus = await connect(ConnectSettings(urls=[nats_url]))  # provisions, so migrates
    try:
        # Nothing is left at an old key or subject, and the old object store is gone.
        assert await store.scan(bus, names.TASKS, TaskRecord, "*") == {}
        assert await store.scan(bus, names.RUNS, RunRecord, "*.*") == {}
        info = await bus.js.stream_info(names.LOGS_STREAM, subjects_filter="taskbus.logs.*.*")
        assert not info.state.subjects
        try:
            await bus.js.stream_info(names.object_stream(migration.OLD_ARTIFACTS))
            raise AssertionError("the old object store is still there")
        except NotFoundError:
            pass
        # A new workspace continues the old id counter.
        assert (await workspaces.create(bus.workspaces, "later")).id == 8

        start_executor(start_daemon, nats_url, tmp_path)
        await wait_for_executors(bus, 1)
        for label in ("default", "team-a"):
            _, task, pending = made[label]  # type: ignore[misc]
            wanted = pending.run_id
            async with sdk.AsyncClient(nats_url, label) as client:
                found = await client.get_task_by_id(task.id)
                assert found.workspace_name() == label
                assert [o.name() for o in await client.list_orchestrations(workspace_name=label)]
                runs = {r.id(): r for r in await found.last_runs()}
                assert set(runs) == {"r-done", pending.run_id}
                [line] = await runs["r-done"].logs()
                assert line.endswith(f"old line of task {label}")
            # The run pending before the migration runs, from the migrated zip.
            ran = await wait_run(
                bus, task.id, lambda r, w=wanted: r.run_id == w and r.status in RUN_TERMINAL
            )
            assert ran.status is RunStatus.SUCCESS, ran
            assert ran.workspace == ("" if label == "default" else label)
            again = await catalog.run_now(bus, await catalog.get_task(bus, task.id))
            async with asyncio.timeout(60):
                async for _, run in store.watch(bus.runs, RunRecord, again.key):
                    if run is not None and run.status is RunStatus.SUCCESS:
                        break
    finally:
        await bus.close()


async def test_a_migration_cut_short_after_the_tasks_keeps_runs_in_their_workspace(
    tmp_path: Path, nats_url: str
) -> None:
    first = await connect(ConnectSettings(urls=[nats_url]))
    try:
        await workspaces.create(first.workspaces, "team-a")
        made = await write_schema_1(first)
        # The first migration moved the tasks, then the process died.
        await migration._move(first.js, first.tasks, TaskRecord, "*", migration._key)
    finally:
        await first.close()

    bus = await connect(ConnectSettings(urls=[nats_url]))  # provisions, so resumes
    try:
        _, task, pending = made["team-a"]  # type: ignore[misc]
        runs = await store.scan(bus, names.RUNS, RunRecord, f"team-a.{task.id}.*")
        assert set(runs) == {f"team-a.{task.id}.r-done", f"team-a.{task.id}.{pending.run_id}"}, (
            await store.scan(bus, names.RUNS, RunRecord, ">")
        ).keys()
    finally:
        await bus.close()


@pytest.mark.parametrize("label", ["a.b", "team a"])
async def test_a_label_that_is_not_a_workspace_name_does_not_block_provisioning(
    nats_url: str, label: str
) -> None:
    """A record written by hand before workspaces, with a label no workspace can have: the
    migration puts it in ``default`` (a key a reader finds) and provisioning goes on."""
    first = await connect(ConnectSettings(urls=[nats_url]))
    try:
        now = utcnow()
        orch = OrchestrationRecord(
            id=catalog.new_id(), name="o", file_name="o.zip", sha="0" * 64, size=1,
            entrypoint="main.py", status=OrchestrationStatus.READY, workspace=label,
            created_at=now, updated_at=now,
        )  # fmt: skip
        task = TaskRecord(
            id=catalog.new_id(), name="t", orchestration_id=orch.id, kind=TaskKind.RUN_ONCE,
            workspace=label, created_at=now, updated_at=now,
        )  # fmt: skip
        await store.put(first.orchestrations, orch.id, orch)
        await store.put(first.tasks, task.id, task)
        await first.workspaces.purge(names.SCHEMA_KEY)
    finally:
        await first.close()

    async with asyncio.timeout(60):
        bus = await connect(ConnectSettings(urls=[nats_url]))  # provisions, so migrates
    try:
        moved = await store.scan(bus, names.TASKS, TaskRecord, ">")
        # Every task is somewhere a reader can find it: <workspace>.<task id>.
        assert all(len(key.split(".")) == 2 for key in moved), moved.keys()
        assert len(moved) == 1 and next(iter(moved)).startswith("default."), moved.keys()
    finally:
        await bus.close()
