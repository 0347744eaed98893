"""Putting work on the queues: the one way a run, a packaging job or a kill is requested.

The SDK (run once, run now) and the scheduler (cron fires) both call ``enqueue_run``: the run
record is created as ``pending`` with KV ``create()`` first (idempotent: a run id derived from
task and instant exists at most once), then the request is published with a ``Nats-Msg-Id``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from broker import names, store
from broker.connection import Bus
from broker.models import (
    PackageRequest,
    RunControl,
    RunRecord,
    RunRequest,
    TaskRecord,
    encode,
    utcnow,
)
from broker.status import RunStatus

# Run ids for scheduled fires are uuid5(task id, instant): two schedulers agree on them.
_RUN_NAMESPACE = uuid.UUID("6f1d3c3e-62f4-4d0e-9a7c-2b1c8a9e5d10")


def run_id_for(task_id: str, instant: datetime | None = None) -> str:
    if instant is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{task_id}@{instant.isoformat()}"))


def msg_id_for(task_id: str, run_id: str, instant: datetime | None) -> str:
    if instant is None:
        return f"{task_id}.{run_id}"
    return f"{task_id}@{instant.isoformat()}"


async def enqueue_run(
    bus: Bus,
    task: TaskRecord,
    *,
    instant: datetime | None = None,
    run_id: str | None = None,
) -> tuple[RunRecord, bool]:
    """Create the pending run record and publish its request.

    Returns the record and whether this call created it. When the record already existed and
    is still pending, the request is published again (de-duplicated by Msg-Id on the server,
    and by the run record's status on the executor), so a crash between the two steps never
    strands a run.
    """
    run_id = run_id or run_id_for(task.id, instant)
    now = utcnow()
    record = RunRecord(task_id=task.id, run_id=run_id, instant=instant, created_at=now)
    key = names.run_key(task.id, run_id)
    created = await store.create(bus.runs, key, record, bus.publisher)
    if not created:
        existing = await store.get(bus.runs, key, RunRecord)
        if existing is None:
            raise RuntimeError(f"run {key} vanished while being created")
        record = existing[0]
        if record.status is not RunStatus.PENDING:
            return record, False
    request = RunRequest(
        task_id=task.id,
        run_id=run_id,
        orchestration_id=task.orchestration_id,
        json_args=task.json_args,
        timeout_s=task.timeout_s,
        retries=task.retries,
        requested_at=now,
    )
    await bus.publisher.publish(
        names.runq_subject(task.pool),
        encode(request),
        {names.MSG_ID: msg_id_for(task.id, run_id, instant)},
    )
    return record, created


async def record_skipped_run(
    bus: Bus, task: TaskRecord, instant: datetime, reason: str
) -> RunRecord | None:
    """A fire that will not run (missed, overlap) is still visible in history, as ``killed``
    with the reason; None when that instant already has a record."""
    run_id = run_id_for(task.id, instant)
    now = utcnow()
    record = RunRecord(
        task_id=task.id,
        run_id=run_id,
        status=RunStatus.KILLED,
        reason=reason,
        instant=instant,
        created_at=now,
        finished_at=now,
        updated_at=now,
    )
    if await store.create(bus.runs, names.run_key(task.id, run_id), record, bus.publisher):
        return record
    return None


async def request_packaging(bus: Bus, orchestration_id: str) -> None:
    await bus.js.publish(
        names.PKGQ_SUBJECT,
        encode(PackageRequest(orchestration_id=orchestration_id)),
        headers={names.MSG_ID: f"pkg.{orchestration_id}"},
    )


async def request_run_kill(bus: Bus, task_id: str, run_id: str, reason: str) -> None:
    """Ask the executor that owns one run to stop it (overlap ``replace``)."""
    control = RunControl(task_id=task_id, run_id=run_id, reason=reason, requested_at=utcnow())
    await store.put(bus.control, names.run_key(task_id, run_id), control)
