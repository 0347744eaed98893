"""Putting work on the queues: the one way a run, a packaging job or a kill is requested.

The SDK (run once, run now, through ``broker.catalog``) and the scheduler (cron fires, through
``broker.scheduler.firing``) both call ``enqueue_run``: the run record is created as
``pending`` with KV ``create()`` first (idempotent: a run id derived from task and instant
exists at most once), then the ``RunRequest`` is published on the run queue
(``names.RUNQ_STREAM``, a work queue) with a ``Nats-Msg-Id``, its acknowledgement awaited
through ``broker.publisher``.

Retries (``enqueue_retry``): an attempt that failed or timed out is one run record; its retry
is a new record (``attempt`` + 1, ``retry_of`` the previous run id, its own log), with a run
id derived from the previous one, so enqueueing it twice (an executor that died between the
final status and the ack, and the redelivery that finishes its work) makes one. The executor
that recorded the end enqueues it at once, before it acks; the back-off is the request's
``not_before``, which executors honour by naking it with a delay (``executor.claim``), so the
waiting retry lives in the stream, not in any process's timer. (A run whose executor vanished
never ended: the redelivered request continues that same record as the next attempt.)

Trace "a run request becoming a process", one hop per module, each docstring naming the next:

1. ``broker.dispatch`` (here): the pending run record, then the request on the run queue;
2. ``executor.daemon``: a ``fetch(1)`` on the queue while a slot is free, a ``RunJob`` each;
3. ``executor.runner``: the run job, from the request to its ack;
4. ``executor.claim``: the run record compare-and-set to ``running`` under this executor;
5. ``executor.isolation``: the run's private space and allowlisted environment (with its own
   credential from ``executor.credentials`` and its connections file from
   ``executor.secrets``);
6. ``executor.process``: the launch contract and the fresh-interpreter launcher;
7. ``executor.zygotes``: the warm-interpreter launcher, the executor's side;
8. ``executor.zygote``: the fork, confinement (cgroup, mounts, UID) and ``__main__``.

next: ``executor.daemon`` (the request's reader).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from broker import names, scope, store
from broker.backoff import Backoff
from broker.models import (
    OrchestrationRecord,
    PackageRequest,
    RunControl,
    RunRecord,
    RunRequest,
    TaskRecord,
    encode,
    utcnow,
)
from broker.publisher import PubAck
from broker.status import RunStatus, will_retry

if TYPE_CHECKING:
    from broker.connection import Bus

# Run ids for scheduled fires are uuid5(task id, instant): two schedulers agree on them.
_RUN_NAMESPACE = uuid.UUID("6f1d3c3e-62f4-4d0e-9a7c-2b1c8a9e5d10")


def run_id_for(task_id: str, instant: datetime | None = None) -> str:
    if instant is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{task_id}@{instant.isoformat()}"))


def msg_id_for(task: TaskRecord, run_id: str, instant: datetime | None) -> str:
    """The run request's de-duplication id: with the workspace, as a task's key has it (a
    user may give a task any id, even one of another workspace's tasks)."""
    if instant is None:
        return task.run_key(run_id)
    return f"{task.key}@{instant.isoformat()}"


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
    record = _pending(task, run_id, instant, now)
    key = record.key
    created = await store.create(bus.runs, key, record, bus.publisher)
    if not created:
        existing = await store.get(bus.runs, key, RunRecord)
        if existing is None:
            raise RuntimeError(f"run {key} vanished while being created")
        record = existing[0]
        if record.status is not RunStatus.PENDING:
            return record, False
    await bus.publisher.publish(*_request(task, run_id, instant, now))
    return record, created


async def enqueue_fires(
    bus: Bus, fires: Sequence[tuple[TaskRecord, datetime]]
) -> list[tuple[RunRecord, bool] | Exception]:
    """``enqueue_run`` for many scheduled fires at once, in one pipeline: every record create
    is sent before any answer is awaited, then every request. No task and no request round
    trip per fire: a burst costs about half the CPU a fire (``tests/bench/bench_scheduler.py``).

    Each fire's outcome is what ``enqueue_run`` would return, or the exception that stopped it
    (for the caller to retry: every step is idempotent). A refused create (a peer's record, or
    a tombstone) goes through ``enqueue_run``, which tells them apart.
    """
    now = utcnow()
    outcomes: list[tuple[RunRecord, bool] | Exception | None] = [None] * len(fires)
    records = [_pending(task, run_id_for(task.id, at), at, now) for task, at in fires]
    creates = await _send_all(
        bus,
        outcomes,
        [store.create_message(names.RUNS, record.key, record) for record in records],
    )
    refused: list[int] = []
    sends: list[tuple[str, bytes, dict[str, str]] | None] = []
    for index, ack in enumerate(creates):
        if isinstance(ack, PubAck) and ack.error is not None:
            if ack.error.wrong_last_sequence:
                refused.append(index)
            else:
                outcomes[index] = ack.error.exception()
        task, at = fires[index]
        ok = isinstance(ack, PubAck) and ack.error is None
        sends.append(_request(task, records[index].run_id, at, now) if ok else None)
    for index, ack in enumerate(await _send_all(bus, outcomes, sends)):
        if isinstance(ack, PubAck):
            outcomes[index] = ack.error.exception() if ack.error else (records[index], True)
    again = await asyncio.gather(
        *(enqueue_run(bus, fires[index][0], instant=fires[index][1]) for index in refused),
        return_exceptions=True,
    )
    for index, outcome in zip(refused, again, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
        outcomes[index] = outcome
    return [outcome if outcome is not None else RuntimeError("not sent") for outcome in outcomes]


async def _send_all(
    bus: Bus,
    outcomes: list[tuple[RunRecord, bool] | Exception | None],
    messages: Sequence[tuple[str, bytes, dict[str, str]] | None],
) -> list[PubAck | None]:
    """Send every message (None: skip), then await every answer; a failure is recorded in
    ``outcomes`` and its answer is None."""
    futures: dict[int, asyncio.Future[PubAck]] = {}
    try:
        for index, message in enumerate(messages):
            if message is None:
                continue
            try:
                futures[index] = await bus.publisher.send(*message)
            except Exception as exc:  # this one is not sent (the connection is closed)
                outcomes[index] = exc
    except BaseException:  # cancelled while sending: nobody will await what was sent
        for future in futures.values():
            future.cancel()
        raise
    answers: list[PubAck | None] = [None] * len(messages)
    results = await asyncio.gather(*futures.values(), return_exceptions=True)
    for index, result in zip(futures, results, strict=True):
        if isinstance(result, Exception):
            outcomes[index] = result
        elif isinstance(result, PubAck):
            answers[index] = result
        else:  # a BaseException (cancellation): let it through
            raise result
    return answers


def retry_delay_s(task: TaskRecord, attempt: int) -> float:
    """The back-off before the attempt after ``attempt``: ``retry_delay_s`` doubled for each
    retry before it, at most ``names.RETRY_DELAY_MAX_S``."""
    return Backoff(first_s=task.retry_delay_s, max_s=names.RETRY_DELAY_MAX_S).delay_s(attempt)


async def enqueue_retry(bus: Bus, run: RunRecord) -> RunRecord | None:
    """The next attempt of an ended run when its task retries it (``status.will_retry``),
    created and requested once however often this is called; None when none follows."""
    key = names.task_key(names.workspace_token(run.workspace), run.task_id)
    found = await store.get(bus.tasks, key, TaskRecord)
    # The task as read at its key: a body naming another id (a user may write its own task
    # records) is no task of this run's, and gets no retry (its body could name any workspace).
    task = None if found is None else scope.adopt(key, found[0])
    if task is None or not will_retry(task, run):
        return None
    delay_s = retry_delay_s(task, run.attempt)
    ended = run.finished_at or utcnow()
    retry_id = str(uuid.uuid5(_RUN_NAMESPACE, f"{run.task_id}.retry.{run.run_id}"))
    cause = run.reason or str(run.status)
    record = msgspec.structs.replace(
        _pending(task, retry_id, None, utcnow()),
        attempt=run.attempt + 1,
        retry_of=run.run_id,
        not_before=ended + timedelta(seconds=delay_s),
        reason=(
            f"retry {run.attempt} of {task.retries} after {cause}: starts {delay_s:g} s after "
            f"attempt {run.attempt} ended"
        ),
    )
    key = record.key
    if not await store.create(bus.runs, key, record, bus.publisher):
        existing = await store.get(bus.runs, key, RunRecord)
        if existing is None or existing[0].status is not RunStatus.PENDING:
            return existing[0] if existing else None
        record = existing[0]
    await bus.publisher.publish(
        *_request(task, retry_id, None, record.created_at, not_before=record.not_before)
    )
    return record


def _pending(task: TaskRecord, run_id: str, instant: datetime | None, now: datetime) -> RunRecord:
    return RunRecord(
        task_id=task.id,
        run_id=run_id,
        workspace=task.workspace,
        instant=instant,
        pool=task.pool,
        created_at=now,
    )


def request_message(task: TaskRecord, run: RunRecord) -> tuple[str, bytes, dict[str, str]]:
    """The request of a pending run (a migration publishes these again)."""
    return _request(task, run.run_id, run.instant, run.created_at, not_before=run.not_before)


def _request(
    task: TaskRecord,
    run_id: str,
    instant: datetime | None,
    now: datetime,
    *,
    not_before: datetime | None = None,
) -> tuple[str, bytes, dict[str, str]]:
    """The run request's subject, payload and headers."""
    request = RunRequest(
        task_id=task.id,
        run_id=run_id,
        orchestration_id=task.orchestration_id,
        workspace=task.workspace,
        json_args=task.json_args,
        timeout_s=task.timeout_s,
        retries=task.retries,
        memory_limit_bytes=task.memory_limit_bytes,
        cpu_limit=task.cpu_limit,
        not_before=not_before,
        requested_at=now,
    )
    headers = {names.MSG_ID: msg_id_for(task, run_id, instant)}
    return names.runq_subject(task.pool), encode(request), headers


async def record_skipped_run(
    bus: Bus, task: TaskRecord, instant: datetime, reason: str
) -> RunRecord | None:
    """A fire that will not run (missed, overlap) is still visible in history, as ``skipped``
    with the reason; None when that instant already has a record."""
    run_id = run_id_for(task.id, instant)
    now = utcnow()
    record = RunRecord(
        task_id=task.id,
        run_id=run_id,
        workspace=task.workspace,
        status=RunStatus.SKIPPED,
        reason=reason,
        instant=instant,
        created_at=now,
        finished_at=now,
        updated_at=now,
    )
    if await store.create(
        bus.runs, record.key, record, bus.publisher, ttl_s=bus.settings.run_retention_s
    ):
        return record
    return None


async def request_packaging(bus: Bus, orchestration: OrchestrationRecord) -> None:
    request = PackageRequest(orchestration_id=orchestration.id, workspace=orchestration.workspace)
    await bus.js.publish(
        names.PKGQ_SUBJECT,
        encode(request),
        headers={names.MSG_ID: f"pkg.{orchestration.key}"},
    )


async def request_run_kill(bus: Bus, task: TaskRecord, run_id: str, reason: str) -> None:
    """Ask the executor that owns one run to stop it (overlap ``replace``)."""
    control = RunControl(task_id=task.id, run_id=run_id, reason=reason, requested_at=utcnow())
    await store.put(bus.control, task.run_key(run_id), control)
