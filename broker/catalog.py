"""The domain operations on orchestrations and tasks, shared by the SDK and the console.

These are the only writers of orchestration records (creation) and task records (specs and
the killed/paused flags). Runs are created by ``broker.dispatch``; from then on only the
executor that owns a run writes it.

next (a run once or run now): ``broker.dispatch.enqueue_run``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from typing import Any, TypeVar

import msgspec

from broker import archive, cron, dispatch, limits, names, scope, store, workspaces
from broker.connection import Bus
from broker.errors import (
    InvalidArgument,
    InvalidSchedule,
    OrchestrationCannotRun,
    OrchestrationNotFound,
    OrchestrationUploadFailed,
    PermissionDenied,
    SchedulerUnavailable,
    TaskNotFound,
    WrongArgumentType,
)
from broker.models import ExecutorRecord, OrchestrationRecord, RunRecord, TaskRecord, utcnow
from broker.roles import Role
from broker.status import (
    MissedPolicy,
    OrchestrationStatus,
    Overlap,
    RunStatus,
    TaskKind,
    task_status,
)


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(value: object, what: str = "task") -> str:
    """A well-formed id, or ``ValueError`` saying what a good one looks like."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(
            f"{value!r} is not a valid {what} id: ids are UUIDs such as "
            f"'7b5f0e8a-3c1d-4f2e-9a6b-1c2d3e4f5a6b' (list_tasks() or `taskbus tasks` shows "
            f"them)."
        ) from None


def check_json_args(json_args: object) -> dict[str, Any]:
    """A JSON object that round-trips, or ``TypeError`` naming the bad value."""
    if not isinstance(json_args, dict):
        raise WrongArgumentType(
            f"json_args must be a dict (a JSON object), not {type(json_args).__name__}: "
            f"{json_args!r}"
        )
    try:
        json.dumps(json_args, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WrongArgumentType(
            f"json_args must hold only JSON values (str, number, bool, None, list, dict): {exc}"
        ) from None
    return json_args


def check_timeout(timeout: object) -> int | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise InvalidArgument(
            f"timeout must be a positive whole number of seconds or None, not {timeout!r}"
        )
    return timeout


_POOL = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_retries(retries: object, retry_delay_s: object) -> tuple[int, float]:
    """A whole number of retries (0 to ``names.MAX_RETRIES``) and a delay of seconds >= 0."""
    if (
        isinstance(retries, bool)
        or not isinstance(retries, int)
        or not (0 <= retries <= names.MAX_RETRIES)
    ):
        raise InvalidArgument(
            f"retries must be a whole number from 0 to {names.MAX_RETRIES}, not {retries!r}"
        )
    if (
        isinstance(retry_delay_s, bool)
        or not isinstance(retry_delay_s, int | float)
        or not math.isfinite(retry_delay_s)
        or retry_delay_s < 0
    ):
        raise InvalidArgument(
            f"retry_delay_s must be a number of seconds >= 0 (the first retry's delay; each "
            f"one after waits twice as long), not {retry_delay_s!r}"
        )
    return retries, float(retry_delay_s)


def check_pool(pool: object) -> str:
    """A pool name: letters, digits, ``-`` and ``_`` (it is a token of the run queue's subject)."""
    if not isinstance(pool, str) or not _POOL.fullmatch(pool):
        raise InvalidArgument(
            f"pool must be a name of letters, digits, '-' and '_' (at most 64), such as "
            f"'default' or 'gpu', not {pool!r}"
        )
    return pool


def check_limits(memory_limit: object, cpu_limit: object) -> tuple[int | None, float | None]:
    """``memory_limit`` ("2GiB", bytes) and ``cpu_limit`` (1.5) as bytes and CPUs."""
    try:
        return limits.parse_memory(memory_limit), limits.parse_cpus(cpu_limit)  # type: ignore[arg-type]
    except limits.InvalidLimit as exc:
        raise InvalidArgument(str(exc)) from None


async def served_pools(bus: Bus) -> set[str]:
    """The pools that some live executor serves (from the executors' heartbeats)."""
    records = await store.scan(bus, names.EXECUTORS, ExecutorRecord)
    return {record.pool for record in records.values()}


def waiting_reason(run: RunRecord, served: set[str]) -> str:
    """Why a pending run has not started, derived at read time ("" when nothing is amiss)."""
    if run.status is RunStatus.PENDING and run.pool not in served:
        return f"waiting: no executor serves pool {run.pool!r}"
    return ""


P = TypeVar("P", Overlap, MissedPolicy)
K = TypeVar("K", OrchestrationRecord, TaskRecord, RunRecord)


def _policy(kind: type[P], value: str, what: str) -> P:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise InvalidSchedule(f"Unknown {what} policy {value!r}: use one of {choices}.") from None


# --- Orchestrations ---------------------------------------------------------------------------
async def upload_orchestration(
    bus: Bus, data: bytes, *, name: str | None, file_name: str, workspace: str = ""
) -> OrchestrationRecord:
    """Validate the zip, store it (one blob per sha in a workspace), create the record,
    request packaging. ``workspace``: the workspace's name ("" or ``default``: the default
    one)."""
    info = archive.inspect(data)
    label = workspaces.label(workspace)
    try:
        await bus.zips.put(names.workspace_token(label), info.sha, data)
    except PermissionDenied:
        raise
    except Exception as exc:
        raise OrchestrationUploadFailed(
            f"The zip could not be stored on the bus: {exc}. Check the server's disk space and "
            f"retry."
        ) from exc
    now = utcnow()
    record = OrchestrationRecord(
        id=new_id(),
        name=name or file_name.removesuffix(".zip"),
        file_name=file_name,
        sha=info.sha,
        size=info.size,
        entrypoint=info.entrypoint,
        requirements=info.requirements,
        workspace=label,
        created_at=now,
        updated_at=now,
    )
    await store.create(bus.orchestrations, record.key, record)
    await dispatch.request_packaging(bus, record)
    return record


def in_workspace(record: OrchestrationRecord | TaskRecord, workspace: str | None) -> bool:
    """Is ``record`` in the workspace named ``workspace`` (None: any; "" is ``default``)?"""
    if workspace is None:
        return True
    return workspaces.name_of(record.workspace) == workspaces.name_of(workspace)


async def records(
    bus: Bus, bucket: str, kind: type[K], rest: str = ">", workspace: str | None = None
) -> dict[str, K]:
    """The records of ``bucket`` at keys ``<workspace>.<rest>`` that this connection may see
    (of one workspace, or of all it may see), each with its key's workspace."""
    wanted = None if workspace is None else workspaces.name_of(workspace)
    patterns = scope.filters(bus.creds, rest, wanted)
    if not any(token in ("*", ">") for p in patterns for token in p.split(".")):
        # Exact keys (an id in the workspaces this credential is granted): direct gets, which
        # a run's credential may do for its own records where it may not list.
        kv = bus.kv(bucket)
        gets = await asyncio.gather(*(store.get(kv, key, kind) for key in patterns))
        listings = [{key: got[0]} for key, got in zip(patterns, gets, strict=True) if got]
    else:
        listings = await asyncio.gather(*(store.scan(bus, bucket, kind, p) for p in patterns))
    found: dict[str, K] = {}
    for listing in listings:
        for key, record in listing.items():
            adopted = scope.adopt(key, record)
            if adopted is not None:
                found[key] = adopted
    return found


async def list_orchestrations(bus: Bus, workspace: str | None = None) -> list[OrchestrationRecord]:
    """Oldest first; only those of the workspace named ``workspace`` unless it is None."""
    found = await records(bus, names.ORCHESTRATIONS, OrchestrationRecord, workspace=workspace)
    return sorted(found.values(), key=lambda r: r.created_at)


async def get_orchestration(
    bus: Bus, id_or_name: str, workspace: str | None = None
) -> OrchestrationRecord:
    """By id, else the newest upload of that name (in ``workspace``, else any visible one)."""
    try:
        key = str(uuid.UUID(id_or_name))
    except ValueError:
        key = ""
    if key:
        by_id = await records(bus, names.ORCHESTRATIONS, OrchestrationRecord, key, workspace)
        if by_id:
            return next(iter(by_id.values()))
    matches = [r for r in await list_orchestrations(bus, workspace) if r.name == id_or_name]
    if not matches:
        raise OrchestrationNotFound(
            f"No orchestration with id or name {id_or_name!r}; list_orchestrations() (or "
            f"`taskbus orchestrations`) shows them."
        )
    return matches[-1]  # the newest upload of that name


async def reload_orchestration(bus: Bus, record: OrchestrationRecord) -> OrchestrationRecord:
    """The current state of an orchestration we hold (a get of its key)."""
    found = await store.get(bus.orchestrations, record.key, OrchestrationRecord)
    if found is None:
        raise OrchestrationNotFound(f"Orchestration {record.name!r} ({record.id}) was deleted.")
    return scope.adopt(record.key, found[0]) or record


async def delete_orchestration(bus: Bus, record: OrchestrationRecord) -> None:
    """Delete the record; the zip goes too unless another orchestration of its workspace
    shares its sha."""
    current = await reload_orchestration(bus, record)
    await bus.orchestrations.delete(current.key)
    others = await list_orchestrations(bus, current.workspace or names.DEFAULT_WORKSPACE)
    if not any(r.sha == current.sha for r in others):
        await bus.zips.delete(names.workspace_token(current.workspace), current.sha)


# --- Tasks ------------------------------------------------------------------------------------
async def create_task(
    bus: Bus,
    orchestration: OrchestrationRecord,
    *,
    name: str,
    kind: TaskKind,
    json_args: object = None,
    timeout: object = None,
    debug: bool = False,
    schedule: str = "",
    tz: str = "UTC",
    overlap: str = "allow",
    missed: str = "latest",
    retries: object = 0,
    retry_delay_s: object = 10,
    pool: object = names.DEFAULT_POOL,
    memory_limit: object = None,
    cpu_limit: object = None,
) -> TaskRecord:
    """Validate everything first (nothing is stored on bad input), then store the task; a
    run-once task gets its run at once."""
    args = check_json_args({} if json_args is None else json_args)
    timeout_s = check_timeout(timeout)
    retry_count, delay_s = check_retries(retries, retry_delay_s)
    pool_name = check_pool(pool)
    memory_limit_bytes, cpus = check_limits(memory_limit, cpu_limit)
    if kind is TaskKind.SCHEDULED:
        cron.validate(schedule, tz)
    else:
        cron.zone(tz)
    overlap_policy = _policy(Overlap, overlap, "overlap")
    missed_policy = _policy(MissedPolicy, missed, "missed")
    current = await reload_orchestration(bus, orchestration)
    if current.status is OrchestrationStatus.ERROR:
        raise OrchestrationCannotRun(
            f"Orchestration {current.name!r} failed packaging and cannot run: "
            f"{current.error.rstrip('. ')}. Fix it and upload again."
        )
    now = utcnow()
    task = TaskRecord(
        id=new_id(),
        name=name,
        orchestration_id=current.id,
        kind=kind,
        json_args=args,
        timeout_s=timeout_s,
        debug=debug,
        schedule=schedule if kind is TaskKind.SCHEDULED else "",
        tz=tz,
        overlap=overlap_policy,
        missed=missed_policy,
        retries=retry_count,
        retry_delay_s=delay_s,
        pool=pool_name,
        memory_limit_bytes=memory_limit_bytes,
        cpu_limit=cpus,
        # Tasks run in their orchestration's workspace (its runs could not read it elsewhere).
        workspace=current.workspace,
        created_at=now,
        updated_at=now,
    )
    await store.create(bus.tasks, task.key, task)
    if kind is TaskKind.RUN_ONCE and starts_runs(bus):
        await dispatch.enqueue_run(bus, task, run_id=dispatch.run_id_for(task.id, now))
    return task


def starts_runs(bus: Bus) -> bool:
    """Whether this connection writes run records itself: a server without authentication,
    or the admin. Users and operators may not (they could forge a run's status): the
    scheduler starts their run-once and run-now runs, with the same derived run id."""
    return bus.creds is None or bus.creds.role in (Role.ADMIN, Role.SCHEDULER)


async def get_task(bus: Bus, task: TaskRecord | str) -> TaskRecord:
    """The current record of a task, by the record we hold (a get of its key) or by id (a
    listing of that id over the workspaces this connection may see)."""
    if isinstance(task, TaskRecord):
        found = await store.get(bus.tasks, task.key, TaskRecord)
        if found is not None and (current := scope.adopt(task.key, found[0])) is not None:
            return current
        key = task.id
    else:
        key = check_id(task)
        by_id = await records(bus, names.TASKS, TaskRecord, key)
        if by_id:
            return next(iter(by_id.values()))
    raise TaskNotFound(
        f"No task with id {key}; list_tasks() (or `taskbus tasks`) shows the tasks there are."
    )


async def list_tasks(bus: Bus, workspace: str | None = None) -> list[TaskRecord]:
    """Every task (of the workspace named ``workspace`` unless it is None)."""
    return list((await records(bus, names.TASKS, TaskRecord, workspace=workspace)).values())


async def runs_of(bus: Bus, task: TaskRecord | str) -> list[RunRecord]:
    """Every run of one task, newest first."""
    if isinstance(task, TaskRecord):
        found = await records(bus, names.RUNS, RunRecord, f"{task.id}.*", task.workspace)
    else:
        found = await records(bus, names.RUNS, RunRecord, f"{check_id(task)}.*")
    return sorted(found.values(), key=lambda r: r.created_at, reverse=True)


async def all_runs(bus: Bus, workspace: str | None = None) -> dict[str, list[RunRecord]]:
    """Runs grouped by task key (``TaskRecord.key``), newest first within each task."""
    grouped: dict[str, list[RunRecord]] = {}
    for run in (await records(bus, names.RUNS, RunRecord, workspace=workspace)).values():
        grouped.setdefault(run.task_key, []).append(run)
    for runs in grouped.values():
        runs.sort(key=lambda r: r.created_at, reverse=True)
    return grouped


async def set_task_flags(
    bus: Bus, task: TaskRecord | str, *, killed: bool | None = None, paused: bool | None = None
) -> TaskRecord:
    """Set the kill/pause flags with compare-and-set; killing is final."""

    def mutate(current: TaskRecord) -> TaskRecord | None:
        changes: dict[str, Any] = {}
        if killed is not None and killed != current.killed and not current.killed:
            changes["killed"] = killed
        if paused is not None and paused != current.paused and not current.killed:
            changes["paused"] = paused
        if not changes:
            return None
        return msgspec.structs.replace(current, updated_at=utcnow(), **changes)

    record = await get_task(bus, task)
    updated = await store.update(bus.tasks, record.key, TaskRecord, mutate)
    if updated is None:
        raise TaskNotFound(f"No task with id {record.id}.")
    return scope.adopt(record.key, updated) or record


async def run_now(
    bus: Bus, task: TaskRecord | str, wait_s: float = names.RUN_NOW_WAIT_S
) -> RunRecord:
    """Start one run of any task now (the console's "run now"): directly where this
    connection may write runs, else by asking the scheduler (``run_now_at`` on the task) and
    waiting for the run it creates."""
    record = await get_task(bus, task)
    now = utcnow()
    run_id = dispatch.run_id_for(record.id, now)
    if starts_runs(bus):
        started, _ = await dispatch.enqueue_run(bus, record, run_id=run_id)
        return started

    def ask(current: TaskRecord) -> TaskRecord:
        return msgspec.structs.replace(current, run_now_at=now)

    await store.update(bus.tasks, record.key, TaskRecord, ask)
    key = record.run_key(run_id)
    try:
        async with asyncio.timeout(wait_s):
            async for _, run in store.watch(bus.runs, RunRecord, key):
                if run is not None:
                    return scope.adopt(key, run) or run
    except TimeoutError:
        pass
    raise SchedulerUnavailable(
        f"No scheduler started the run within {wait_s:g} s: runs of a run-now or "
        f"run-once task are started by the scheduler (`taskbus scheduler`; `taskbus up` runs "
        f"one). It starts this one when it is back, within {names.RUN_ONCE_DEADLINE_S:.0f} s."
    )


async def status_of(bus: Bus, task: TaskRecord) -> str:
    return task_status(task, await runs_of(bus, task))
