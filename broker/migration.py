"""Moving a store made before keys carried workspaces (schema 1) to today's layout (schema 2).

Schema 1 keyed tasks and orchestrations by id, runs and run controls by ``<task>.<run>``, put
log lines on ``taskbus.logs.<task>.<run>`` and zips in nats-py's object store
``taskbus_artifacts``; none of them named the workspace, so no server permission could scope a
credential to its workspaces. Provisioning (the admin only) calls ``migrate``: every record
moves to its workspace's key (the workspace its own label names, or ``default``), every run's
log lines to its workspace's subject, every zip to its workspace's zips, and a pending run's
request is published again with its workspace. Then the schema mark is written.

Each step is idempotent and leaves the old copy until the new one is stored, so a migration
cut short (a crash, a full disk) carries on at the next start, and an old store opens with
everything in it (``tests/test_migration.py``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from broker import dispatch, names, scope, store
from broker.follow import Follow
from broker.models import (
    OrchestrationRecord,
    Record,
    RunControl,
    RunRecord,
    SchemaMark,
    TaskRecord,
    WorkspaceIds,
    encode,
)
from broker.publisher import Publisher
from broker.status import RUN_TERMINAL, RunStatus
from broker.zipstore import ZipStore

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)
K = TypeVar("K", TaskRecord, OrchestrationRecord)
A = TypeVar("A", TaskRecord, RunRecord)
_NAME = re.compile(names.NAME_PATTERN)

OLD_WORKSPACE_IDS = "_ids.last"  # schema 1's id counter (two tokens)
OLD_ARTIFACTS = "taskbus_artifacts"  # schema 1's object store of zips
READ_TIMEOUT_S = 10.0


async def migrate(js: JetStreamContext, handles: dict[str, Any], *, run_retention_s: float) -> None:
    """Bring the store to ``names.SCHEMA_VERSION`` (a no-op once it is there)."""
    marks: KeyValue = handles["workspaces"]
    found = await store.get(marks, names.SCHEMA_KEY, SchemaMark)
    if found is not None and found[0].version >= names.SCHEMA_VERSION:
        return
    publisher = Publisher(js._nc)
    await publisher.start()
    await _move_id_counter(marks)
    await _move(js, handles["tasks"], TaskRecord, "*", _key, adapt=_named)
    await _move(js, handles["orchestrations"], OrchestrationRecord, "*", _key, adapt=_named)
    # Every task in the new layout, those a migration cut short moved included: the runs,
    # controls and logs of a task go to its workspace.
    tasks = await _adopted(js, names.TASKS, TaskRecord, "*.*")
    workspace_of = {task.id: task.workspace for task in tasks.values()}

    def run_key(old: str, record: RunRecord | RunControl) -> str:
        workspace = names.workspace_token(workspace_of.get(record.task_id, ""))
        return names.run_key(workspace, record.task_id, record.run_id)

    await _move(
        js,
        handles["runs"],
        RunRecord,
        "*.*",
        run_key,
        adapt=lambda run: _in(run, workspace_of.get(run.task_id, "")),
        ttl_s=lambda run: run_retention_s if run.status in RUN_TERMINAL else None,
    )
    await _move(js, handles["control"], RunControl, "*.*", run_key)
    # Every pending run (a run moved by a migration cut short included) is requested again:
    # a duplicate request is dropped by the executor (the run is no longer pending).
    await _requeue_pending(js, publisher, tasks, await _adopted(js, names.RUNS, RunRecord, "*.*.*"))
    await _move_logs(js, publisher, workspace_of)
    await _move_zips(js, ZipStore(js, publisher), handles["orchestrations"])
    await marks.put(names.SCHEMA_KEY, encode(SchemaMark(version=names.SCHEMA_VERSION)))
    log.info("store migrated to schema %d (keys carry their workspace)", names.SCHEMA_VERSION)


def _in(run: RunRecord, label: str) -> RunRecord:
    return run if run.workspace == label else msgspec.structs.replace(run, workspace=label)


def _key(old: str, record: TaskRecord | OrchestrationRecord) -> str:
    return record.key


def _named(record: K) -> K:
    """A record whose label names no possible workspace (written by hand: "team a", "a.b")
    goes to ``default`` instead of a key no reader could find."""
    if not record.workspace or _NAME.fullmatch(record.workspace):
        return record
    log.warning("%s %s has the label %r, no workspace name: moved to default",
                type(record).__name__, record.id, record.workspace)  # fmt: skip
    return msgspec.structs.replace(record, workspace="")


async def _adopted(js: JetStreamContext, bucket: str, kind: type[A], keys: str) -> dict[str, A]:
    """The records of a bucket in the new layout (``keys``), each with its key's workspace."""
    found: dict[str, A] = {}
    for key, record in (await store.scan_js(js, bucket, kind, keys)).items():
        adopted = scope.adopt(key, record)
        if adopted is not None:
            found[key] = adopted
    return found


async def _move_id_counter(marks: KeyValue) -> None:
    old = await store.get(marks, OLD_WORKSPACE_IDS, WorkspaceIds)
    if old is None:
        return
    current = await store.get(marks, names.WORKSPACE_IDS, WorkspaceIds)
    if current is None or current[0].last_id < old[0].last_id:
        await marks.put(names.WORKSPACE_IDS, encode(old[0]))
    await marks.purge(OLD_WORKSPACE_IDS)


async def _move(
    js: JetStreamContext,
    kv: KeyValue,
    kind: type[R],
    old_keys: str,
    new_key: Any,
    *,
    adapt: Any = None,
    ttl_s: Any = None,
) -> dict[str, R]:
    """Every record at an old-layout key, created at its new key, then purged at the old one;
    returns them by new key (old records that do not decode are left where they are)."""
    moved: dict[str, R] = {}
    # Old records that do not decode are logged and left where they are.
    for old, record in (await store.scan_js(js, kv._name, kind, old_keys)).items():
        if adapt is not None:
            record = adapt(record)
        key = new_key(old, record)
        await store.create(kv, key, record, ttl_s=ttl_s(record) if ttl_s else None)
        await kv.purge(old)
        moved[key] = record
    if moved:
        log.info("migrated %d %s records to workspace keys", len(moved), kv._name)
    return moved


async def _requeue_pending(
    js: JetStreamContext,
    publisher: Publisher,
    tasks: dict[str, TaskRecord],
    runs: dict[str, RunRecord],
) -> None:
    """Requests queued before the migration name no workspace: an executor finds no run at
    the key they point to and drops them. Each pending run is requested again."""
    by_id = {task.id: task for task in tasks.values()}
    for run in runs.values():
        task = by_id.get(run.task_id)
        if run.status is not RunStatus.PENDING or task is None:
            continue
        subject, payload, headers = dispatch.request_message(task, run)
        headers[names.MSG_ID] = f"migrated.{headers[names.MSG_ID]}"
        await publisher.publish(subject, payload, headers)


async def _move_logs(
    js: JetStreamContext, publisher: Publisher, workspace_of: dict[str, str]
) -> None:
    """Each run's log batches, in order, onto its workspace's subject; the new subject is
    purged first, so a run cut short is copied again whole."""
    old_subjects = f"{names.LOGS_SUBJECTS[:-1]}*.*"
    try:
        info = await js.stream_info(names.LOGS_STREAM, subjects_filter=old_subjects)
    except NotFoundError:
        return
    subjects = sorted((info.state.subjects or {}).keys())
    for subject in subjects:
        task_id, run_id = subject.split(".")[-2:]
        workspace = names.workspace_token(workspace_of.get(task_id, ""))
        target = names.logs_subject(workspace, task_id, run_id)
        await js.purge_stream(names.LOGS_STREAM, subject=target)
        reader = Follow(
            js,
            names.LOGS_STREAM,
            subject,
            until_loaded=True,
            flow_control=False,
            inactive_threshold_s=30.0,
        )
        async with reader:
            while True:
                try:
                    entry = await reader.next(READ_TIMEOUT_S)
                except StopAsyncIteration:
                    break
                if entry is None:
                    raise nats.errors.TimeoutError
                if entry.value is not None:
                    await publisher.publish(target, entry.value, {})
        await js.purge_stream(names.LOGS_STREAM, subject=subject)
    if subjects:
        log.info("migrated the log lines of %d runs to workspace subjects", len(subjects))


async def _move_zips(js: JetStreamContext, zips: ZipStore, orchestrations: KeyValue) -> None:
    """Every orchestration's zip from the old object store into its workspace's zips; the old
    store is deleted once every zip it holds for an orchestration is copied."""
    try:
        await js.stream_info(names.object_stream(OLD_ARTIFACTS))
    except NotFoundError:
        return
    old = ObjectStore(name=OLD_ARTIFACTS, stream=names.object_stream(OLD_ARTIFACTS), js=js)
    records = await store.scan_js(js, orchestrations._name, OrchestrationRecord, "*.*")
    missing = 0
    for key, record in records.items():
        workspace = key.split(".", 1)[0]
        if await zips.exists(workspace, record.sha):
            continue
        try:
            found = await old.get(record.sha)
        except Exception as exc:
            log.warning("zip %s of orchestration %s is gone: %s", record.sha[:12], key, exc)
            missing += 1
            continue
        await zips.put(workspace, record.sha, found.data or b"")
    if not missing:
        await js.delete_stream(names.object_stream(OLD_ARTIFACTS))
        log.info("migrated %d zips to workspace zips", len(records))
