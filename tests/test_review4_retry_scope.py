"""Review 4: a retry's record goes to the workspace of the key its task was read at, never to
the one a task record's body claims."""

from __future__ import annotations

from broker import catalog, dispatch, names, store, workspaces
from broker.connection import Bus
from broker.models import RunRecord, TaskRecord, utcnow
from broker.status import RunStatus, TaskKind


async def test_a_retry_never_lands_in_the_workspace_a_task_body_names(bus: Bus) -> None:
    await workspaces.create(bus.workspaces, "team-a")
    await workspaces.create(bus.workspaces, "team-b")
    now = utcnow()
    own_id, victim_id = catalog.new_id(), catalog.new_id()
    # A team-a user rewrites its own task (it may write team-a's tasks) with a body naming a
    # team-b task id and workspace.
    lie = TaskRecord(
        id=victim_id, name="t", orchestration_id=catalog.new_id(), kind=TaskKind.RUN_ONCE,
        workspace="team-b", retries=3, json_args={"evil": 1}, created_at=now, updated_at=now,
    )  # fmt: skip
    await store.put(bus.tasks, names.task_key("team-a", own_id), lie)
    failed = RunRecord(
        task_id=own_id, run_id="r1", workspace="team-a", status=RunStatus.FAILURE,
        created_at=now, started_at=now, finished_at=now,
    )  # fmt: skip
    retry = await dispatch.enqueue_retry(bus, failed)  # as the executor does on a failure
    in_b = await store.scan(bus, names.RUNS, RunRecord, "team-b.>")
    assert in_b == {}, (retry, in_b)
