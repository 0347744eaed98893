"""This executor's claim on one run: taking its RunRequest, and every write fenced on it after.

Taking: the run record decides. Terminal → a duplicate delivery, ack. Killed task or a kill
request → ``killed``. Orchestration still packaging → nak with a delay; packaging failed →
``failure`` with its error. ``running`` under another executor → that executor was lost (its
ack wait passed without ``in_progress``): the attempt is recorded and retried if the request
allows, else ``failure``/"executor lost (<its id>)". Otherwise compare-and-set to ``running``
with this executor's id and the attempt: every later write is fenced on that (status,
executor, attempt), so a run taken over elsewhere is never overwritten by a stale executor.

Running what was taken is ``executor.runner``'s part. next: ``executor.isolation`` (the
run's private space, which the runner prepares once the claim is taken).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from broker import dispatch, names, scope, store
from broker.connection import Bus
from broker.models import (
    ExecutorRecord,
    LogBatch,
    OrchestrationRecord,
    RunControl,
    RunRecord,
    RunRequest,
    TaskRecord,
    decode,
    utcnow,
)
from broker.status import RUN_RETRIED, RUN_TERMINAL, OrchestrationStatus, RunStatus
from executor.context import Context
from executor.control import kill_reason
from executor.logstream import LogStream

log = logging.getLogger(__name__)

# A status write NATS does not store (a full store answers nothing; a lost connection) is
# tried again with this back-off: soon after the store is back, without hammering it before.
WRITE_RETRY_FIRST_S = 0.25
WRITE_RETRY_MAX_S = 2.0
# How long the write of how a run ended is retried: long enough for someone to free space,
# bounded so that a run never holds its executor slot for ever.
STATUS_WRITE_GIVE_UP_S = 900.0


class Claim:
    """One RunRequest's hold on its run record: the delivery to ack or nak, the record as last
    written, and the (status, executor, attempt) every write after the claim is fenced on."""

    def __init__(self, ctx: Context, msg: Msg, request: RunRequest) -> None:
        self.ctx = ctx
        self.msg = msg  # the latest delivery: in_progress and the final ack go to it
        self.request = request
        self.key = request.key
        self.record: RunRecord | None = None
        self.attempt = 0
        self.claimed_at: float | None = None  # monotonic; the claim was a confirmed write
        self.lost = False  # found taken over elsewhere: publish and record nothing more
        self.first_seq = 1
        self.note = ""
        self.orchestration: OrchestrationRecord | None = None

    def ours(self, record: RunRecord) -> bool:
        return (
            record.status is RunStatus.RUNNING
            and record.executor == self.ctx.settings.id
            and record.attempt == self.attempt
        )

    # --- taking ------------------------------------------------------------------------------
    async def take(self, requested_kill: Callable[[], str | None]) -> bool:
        """True once the run is claimed here; else the request is settled (ack, nak or term).
        ``requested_kill``: the kill asked of the run so far, read once its records are in."""
        ctx, request = self.ctx, self.request
        bus = ctx.bus
        # Everything by key (workspace first), never by id alone: a user may give its own
        # orchestration any id, even one of another workspace's.
        orchestration = ctx.ready_orchestrations.get(request.orchestration_key)
        run_found, task_found, control_found, orch_found = await asyncio.gather(
            store.get(bus.runs, self.key, RunRecord),
            store.get(bus.tasks, request.task_key, TaskRecord),
            store.get(bus.control, self.key, RunControl),
            _none() if orchestration else store.get(
                bus.orchestrations, request.orchestration_key, OrchestrationRecord
            ),
        )  # fmt: skip
        if run_found is None:
            log.warning("⊘ %s has no run record; dropping its request", self.key)
            await self.settle(self.msg.term)
            return False
        run = self.record = run_found[0]
        if run.status in RUN_TERMINAL:
            log.info("  %s already %s; duplicate delivery acked", self.key, run.status)
            await self.done()  # its retry, if its executor died before enqueueing it
            return False
        if orchestration is None and orch_found is not None:
            orchestration = scope.adopt(request.orchestration_key, orch_found[0])
            if orchestration is not None and orchestration.status is OrchestrationStatus.READY:
                ctx.ready_orchestrations[request.orchestration_key] = orchestration
        self.orchestration = orchestration
        task = task_found[0] if task_found else None
        kill = (
            "the task was deleted"
            if task is None
            else kill_reason(task, control_found[0] if control_found else None)
        ) or requested_kill()
        if run.status is RunStatus.RUNNING and not await self._previous_lost(run):
            return False
        if kill:
            return await self._end_untaken(RunStatus.KILLED, f"{kill} before the run started")
        wait_s = (request.not_before - utcnow()).total_seconds() if request.not_before else 0
        if wait_s > 0:  # a retry's back-off; rechecked now and then for a kill
            await self.settle(lambda: self.msg.nak(delay=min(wait_s, names.RETRY_RECHECK_S)))
            return False
        if orchestration is None:
            return await self._end_untaken(
                RunStatus.FAILURE, f"orchestration {request.orchestration_id} no longer exists"
            )
        if orchestration.status in (
            OrchestrationStatus.PENDING_PACKAGING,
            OrchestrationStatus.PACKAGING,
        ):
            delay = min(0.05 * 2 ** (self.msg.metadata.num_delivered - 1), 5.0)
            log.debug("%s waits for packaging of %s (%.2fs)", self.key, orchestration.id, delay)
            await self.settle(lambda: self.msg.nak(delay=delay))
            return False
        if orchestration.status is OrchestrationStatus.ERROR:
            return await self._end_untaken(
                RunStatus.FAILURE,
                f"orchestration {orchestration.name!r} failed packaging: {orchestration.error}",
            )
        return await self._claim(run)

    async def _previous_lost(self, run: RunRecord) -> bool:
        """A redelivered run another executor had: False (nak) if that one is still alive."""
        bus = self.ctx.bus
        owner = (
            await store.get(bus.executors, run.executor, ExecutorRecord) if run.executor else None
        )
        if owner is not None and names.run_token(self.key) in owner[0].running:
            log.info("  %s still runs on live executor %s; later", self.key, run.executor)
            # Asked again a heartbeat later: a dead owner's record expires within half the
            # ack wait of its death, so the loss is recorded within the ack wait + one beat.
            await self.settle(lambda: self.msg.nak(delay=self.ctx.settings.beat_interval_s))
            return False
        self.first_seq = await _last_log_seq(bus, self.request) + 1
        self.note = (
            f"attempt {run.attempt} was lost with executor {run.executor or '?'} "
            f"(no heartbeat, no ack); "
        )
        return True

    async def _claim(self, run: RunRecord) -> bool:
        settings = self.ctx.settings
        attempt = run.attempt
        if run.status is RunStatus.RUNNING:
            if run.attempt >= 1 + self.request.retries:
                self.note += "no retries left"
                log.info("↯ %s attempt %d lost with %s", self.key, run.attempt, run.executor)
                return await self._end_untaken(
                    RunStatus.FAILURE, f"executor lost ({run.executor or '?'})"
                )
            attempt = run.attempt + 1
            self.note += f"retrying as attempt {attempt} of {1 + self.request.retries}"
            log.info("↻ %s attempt %d lost with %s; retrying", self.key, run.attempt, run.executor)
        expected = (run.status, run.attempt)
        now = utcnow()

        def mutate(record: RunRecord) -> RunRecord | None:
            if (record.status, record.attempt) != expected:
                return None
            return msgspec.structs.replace(
                record, status=RunStatus.RUNNING, attempt=attempt, executor=settings.id, pid=0,
                exit_code=None, reason="", started_at=now, finished_at=None, updated_at=now,
            )  # fmt: skip

        if await self.write(mutate) is None:
            log.info("  %s was taken by another executor first", self.key)
            await self.settle(lambda: self.msg.nak(delay=settings.ack_wait_s))
            return False
        self.attempt = attempt
        self.claimed_at = time.monotonic()
        return True

    async def _end_untaken(self, status: RunStatus, reason: str) -> bool:
        """End a run that will not start here (killed first, failed packaging, lost)."""
        assert self.record is not None
        expected = (self.record.status, self.record.attempt)
        now = utcnow()
        logs = self.log_stream()
        if self.note:
            logs.taskbus(self.note)
        logs.taskbus(f"{status}: {reason}")
        await logs.close()

        def mutate(record: RunRecord) -> RunRecord | None:
            if (record.status, record.attempt) != expected:
                return None
            return msgspec.structs.replace(
                record, status=status, reason=reason, finished_at=now, updated_at=now
            )

        try:
            written = await self.write_stored(mutate, STATUS_WRITE_GIVE_UP_S)
        except (nats.errors.Error, TimeoutError) as exc:  # unacked: a redelivery ends it
            log.error("could not record that %s ended %s: %s", self.key, status, exc)
            return False
        if written is not None:
            log.info("⊘ %s %s: %s", self.key, status, reason)
            self.ctx.stats[str(status)] += 1
        await self.settle(self.msg.ack)
        return False

    # --- the run's log and records -----------------------------------------------------------
    def log_stream(self) -> LogStream:
        """The run's log (it publishes as lines come inside ``LogStream.flushing()``, and at
        ``close()`` in any case)."""
        settings = self.ctx.settings
        assert self.record is not None
        # De-duplication ids name the writer: a stale executor's retries never collide with
        # its replacement's batches, which continue the same sequence numbers.
        writer = f"{settings.id}#{self.attempt or self.record.attempt}"
        stream = LogStream(
            self.ctx.bus, self.request.workspace, self.request.task_id, self.request.run_id,
            first_seq=self.first_seq, max_bytes=settings.max_log_bytes,
            linger_s=settings.log_linger_s, batch_lines=settings.log_batch_lines,
            writer=writer, owned=lambda: not self.lost,
        )  # fmt: skip
        return stream

    async def write(self, mutate: Callable[[RunRecord], RunRecord | None]) -> RunRecord | None:
        """Compare-and-set (``store.update``); None when ``mutate`` declines (the record is no
        longer what this executor expects) or the record is gone."""
        declined = False

        def apply(record: RunRecord) -> RunRecord | None:
            nonlocal declined
            new = mutate(record)
            declined = new is None
            return new

        bus = self.ctx.bus
        written = await store.update(
            bus.runs, self.key, RunRecord, apply, publisher=bus.publisher, ttl=_retention(bus)
        )
        if written is None or declined:
            return None
        self.record = written
        return written

    async def write_stored(
        self, mutate: Callable[[RunRecord], RunRecord | None], give_up_s: float
    ) -> RunRecord | None:
        """``write``, tried again while NATS does not store it (its store full, the connection
        lost) for up to ``give_up_s``; the last error is raised past that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_s
        delay = WRITE_RETRY_FIRST_S
        failures = 0
        while True:
            try:
                written = await self.write(mutate)
            except (nats.errors.Error, TimeoutError) as exc:
                if loop.time() + delay > deadline:
                    raise
                failures += 1
                if failures == 1:
                    log.warning("%s not recorded yet (%s); retrying until it is",
                                self.key, exc or type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_S)
                continue
            if failures:
                log.info("%s recorded after %d failed writes", self.key, failures)
            return written

    async def done(self) -> None:
        """The run's record has ended: enqueue its retry if its task retries it
        (``dispatch.enqueue_retry``, idempotent), then ack; if the retry could not be
        enqueued, leave the request unacked so that its redelivery does it."""
        run = self.record
        try:
            if run and run.status in RUN_RETRIED and run.attempt <= self.request.retries:
                await dispatch.enqueue_retry(self.ctx.bus, run)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not enqueue the retry of %s (redelivery will): %s", self.key, exc)
            return
        await self.settle(self.msg.ack)

    async def settle(self, action: Callable[[], object]) -> None:
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not ack/nak %s: %s", self.key, exc)


def _retention(bus: Bus) -> Callable[[RunRecord], float | None]:
    """A finished run's record expires after the retention period; an active one never."""
    retention_s = bus.settings.run_retention_s
    return lambda run: retention_s if run.status in RUN_TERMINAL else None


async def _none() -> None:
    return None


async def _last_log_seq(bus: Bus, request: RunRequest) -> int:
    """The sequence of the last stored line of a run (0: none), to continue its log."""
    try:
        msg = await bus.js.get_last_msg(names.LOGS_STREAM, logs_subject(request), direct=True)
    except NotFoundError:
        return 0
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("could not read the log of %s: %s", request.key, exc)
        return 0
    if not msg.data:
        return 0
    lines = decode(LogBatch, msg.data).lines
    return lines[-1].seq if lines else 0


def logs_subject(request: RunRequest) -> str:
    workspace = names.workspace_token(request.workspace)
    return names.logs_subject(workspace, request.task_id, request.run_id)
