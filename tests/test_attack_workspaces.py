"""Workspace scope under attack: what a user credential granted team-a only, or code running
inside a task of team-a with its run's own credential, can do to team-b (SECURITY.md: a
workspace is an access boundary the server enforces). Each test here was first written as an
attack that succeeded; they pass now that the holes are closed."""

from __future__ import annotations

import json

import msgspec
import pytest

from broker import catalog, dispatch, names, store, workspaces
from broker.connection import Bus
from broker.errors import PermissionDenied
from broker.models import (
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    WorkspaceIds,
    encode,
    utcnow,
)
from broker.status import OrchestrationStatus, RunStatus, TaskKind
from tests.helpers import make_zip
from tests.test_auth import refused
from tests.test_workspace_scope import Teams, finished, stdout, teams

__all__ = ["teams"]  # the fixture, shared with tests.test_workspace_scope


async def alice_runs(teams: Teams, orch: OrchestrationRecord, name: str) -> RunRecord:
    task = await catalog.create_task(teams.alice, orch, name=name, kind=TaskKind.RUN_ONCE)
    return await finished(teams.alice, task)


# --- inside a task of team-a: the executor's caches -------------------------------------------

# A main.py that lists the folder above its own (when started as "<sha>/main.py" of a copy of
# the executor's whole tree cache: every cached zip) and prints every main.py found there.
SNOOP = """
import os
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry, "main.py")
        if os.path.isfile(path):
            print("TREE", entry, open(path).read().replace(chr(10), " | "))
except OSError as exc:
    print("cannot list", type(exc).__name__)
"""


async def test_a_forged_sha_does_not_walk_out_of_the_tree_cache(teams: Teams) -> None:
    """Alice (team-a) writes an orchestration record of her own workspace by hand (her
    credential may): status ready, sha ``../trees``, entrypoint ``<her sha>/main.py``. Its run
    gets a working copy of the executor's whole tree cache — every workspace's code, hardlinks
    readable by any run UID — and prints bob's main.py. It must fail and show nothing of
    team-b's."""
    alice = teams.alice
    own = await catalog.upload_orchestration(
        alice, make_zip({"main.py": SNOOP}), name="snoop", file_name="s.zip", workspace="team-a"
    )
    first = await alice_runs(teams, own, "warm")  # alice's own tree is now cached as well
    assert first.status is RunStatus.SUCCESS, first
    forged = msgspec.structs.replace(
        own, id=catalog.new_id(), name="forged", sha="../trees",
        entrypoint=f"{own.sha}/main.py", status=OrchestrationStatus.READY,
    )  # fmt: skip
    await store.put(alice.orchestrations, forged.key, forged)
    run = await alice_runs(teams, forged, "walk")
    assert "bob-code-7731" not in await stdout(alice, run)
    assert run.status is RunStatus.FAILURE, run


async def test_a_sha_of_another_workspace_does_not_reach_its_cached_code(teams: Teams) -> None:
    """An orchestration record of team-a naming the sha of team-b's zip (which team-a never
    uploaded) must not run team-b's code out of the executor's cache."""
    alice = teams.alice
    own = await catalog.upload_orchestration(
        alice, make_zip({"main.py": "print('mine')"}), name="own", file_name="o.zip",
        workspace="team-a",
    )  # fmt: skip
    forged = msgspec.structs.replace(
        own, id=catalog.new_id(), name="borrowed", sha=teams.bob_orch.sha,
        entrypoint="main.py", status=OrchestrationStatus.READY,
    )  # fmt: skip
    await store.put(alice.orchestrations, forged.key, forged)
    run = await alice_runs(teams, forged, "borrow")
    assert "bob ran" not in await stdout(alice, run)
    assert run.status is RunStatus.FAILURE, run


# --- a team-a user against the shared daemons ---------------------------------------------------


async def test_a_task_record_with_a_naive_timestamp_does_not_stop_the_scheduler(
    teams: Teams,
) -> None:
    """Alice writes a run-once task of team-a whose ``created_at`` has no time zone (a raw KV
    put, which her credential allows); bob's next run-once task must still run."""
    poison = {
        "id": catalog.new_id(), "name": "poison", "orchestration_id": teams.bob_orch.id,
        "kind": "run_once", "workspace": "team-a",
        "created_at": "2030-01-01T00:00:00", "updated_at": "2030-01-01T00:00:00",
    }  # fmt: skip
    await teams.alice.tasks.put(f"team-a.{poison['id']}", json.dumps(poison).encode())
    task = await catalog.create_task(
        teams.bob, teams.bob_orch, name="after", kind=TaskKind.RUN_ONCE
    )
    run = await finished(teams.bob, task, timeout_s=20)
    assert run.status is RunStatus.SUCCESS, run


async def test_a_task_record_with_a_bad_schedule_does_not_stop_the_scheduler(
    teams: Teams,
) -> None:
    """Pinned: a scheduled task of team-a with a schedule the SDK refuses (raw KV put) costs
    the scheduler one watch restart, and bob's next run-once task still runs."""
    now = utcnow()
    poison = TaskRecord(
        id=catalog.new_id(), name="poison", orchestration_id=teams.bob_orch.id,
        kind=TaskKind.SCHEDULED, schedule="not a cron", tz="No/Where", workspace="team-a",
        created_at=now, updated_at=now,
    )  # fmt: skip
    await store.put(teams.alice.tasks, poison.key, poison)
    task = await catalog.create_task(
        teams.bob, teams.bob_orch, name="after", kind=TaskKind.RUN_ONCE
    )
    run = await finished(teams.bob, task, timeout_s=20)
    assert run.status is RunStatus.SUCCESS, run


async def test_a_scoped_user_cannot_touch_the_workspace_id_counter(teams: Teams) -> None:
    """Alice (team-a only) may neither reset the id counter (ids would repeat) nor spoil it
    (no workspace could be created); nor create a workspace herself."""
    before = await teams.admin.workspaces.get(names.WORKSPACE_IDS)
    for value in (encode(WorkspaceIds(last_id=1)), b"not a record"):
        await refused(teams.alice, teams.alice.workspaces.put(names.WORKSPACE_IDS, value))
    after = await teams.admin.workspaces.get(names.WORKSPACE_IDS)
    assert after.value == before.value and after.revision == before.revision
    with pytest.raises(PermissionDenied, match="all-workspaces"):
        await workspaces.create(teams.alice.workspaces, "team-c", teams.alice.creds)
    taken = {w.id for w in await workspaces.list_all(teams.admin)}
    created = await workspaces.create(teams.admin.workspaces, "team-c", teams.admin.creds)
    assert created.id not in taken


async def test_consumer_filters_cannot_reach_past_the_granted_workspace(teams: Teams) -> None:
    """Pinned: a named consumer whose API subject names team-a's keys but whose body asks
    for team-b's (one filter, several, both, or none) is refused by the server."""
    nc = teams.alice.nc
    stream = names.kv_stream(names.TASKS)
    mine = names.kv_subject(names.TASKS, "team-a.>")
    theirs = names.kv_subject(names.TASKS, "team-b.>")
    for config in (
        {"filter_subject": theirs},
        {"filter_subjects": [theirs]},
        {"filter_subject": mine, "filter_subjects": [theirs]},
        {},
    ):
        body = {"stream_name": stream, "config": {"name": "probe", "ack_policy": "none", **config}}
        reply = await nc.request(
            f"$JS.API.CONSUMER.CREATE.{stream}.probe.{mine}", json.dumps(body).encode(), timeout=5
        )
        assert "error" in json.loads(reply.data), (config, reply.data)


async def test_a_retry_never_lands_in_the_workspace_a_task_body_names(bus: Bus) -> None:
    """A retry's record goes to the workspace of the key its task was read at: a team-a user
    who rewrites its own task with a body naming a team-b task gets no retry at all (the
    executor would otherwise create a run, with the body's arguments, in team-b)."""
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
    assert retry is None and in_b == {}, (retry, in_b)
