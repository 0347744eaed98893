"""Review 4: the migration after a crash, and with a label that is not a workspace name."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker import catalog, migration, names, store, workspaces
from broker.connection import connect
from broker.models import OrchestrationRecord, RunRecord, TaskRecord, utcnow
from broker.settings import ConnectSettings
from broker.status import OrchestrationStatus, TaskKind
from tests.test_migration import write_schema_1

LABELS = ("a.b",)  # ("team a",) fails as InvalidKeyError from provisioning


async def test_a_migration_cut_short_after_the_tasks_keeps_runs_in_their_workspace(
    tmp_path: Path, nats_url: str
) -> None:
    first = await connect(ConnectSettings(urls=[nats_url]))
    try:
        await workspaces.create(first.workspaces, "team-a")
        made = await write_schema_1(first)
        # The first migration moved the tasks, then the process died.
        await migration._move(first.js, first.tasks, TaskRecord, "*", migration._task_key)
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


async def test_a_label_that_is_not_a_workspace_name_does_not_block_provisioning(
    nats_url: str,
) -> None:
    first = await connect(ConnectSettings(urls=[nats_url]))
    try:
        now = utcnow()
        for label in LABELS:
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
        assert len(moved) == len(LABELS), moved.keys()
    finally:
        await bus.close()
