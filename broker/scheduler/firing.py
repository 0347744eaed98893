"""Carrying out a plan on the bus: fires (``dispatch.enqueue_run``), skipped-fire records
(``dispatch.record_skipped_run``), overlap checks and replacements, continuous runs.

Every action is idempotent (run ids derived from task and instant, or from the previous run),
so a retry after a bus error, a peer scheduler, or a restart never makes a second run.

next: ``broker.dispatch`` (``enqueue_fires`` pipelines the on-time fires of one instant).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import anyio

from broker import dispatch
from broker.connection import Bus
from broker.models import RunRecord, TaskRecord, utcnow
from broker.scheduler import policy
from broker.scheduler.policy import Action, Step
from broker.scheduler.runbook import RunBook
from broker.scheduler.settings import SchedulerSettings
from broker.status import Overlap

log = logging.getLogger("broker.scheduler")

RETRY_MIN_S = 0.2  # a fire that failed (bus away) is retried, doubling up to RETRY_MAX_S
RETRY_MAX_S = 5.0


class Firing:
    def __init__(
        self,
        bus: Bus,
        settings: SchedulerSettings,
        book: RunBook,
        runs_loaded: asyncio.Event,
        is_armed: Callable[[str], bool],
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.book = book
        self.stats: Counter[str] = Counter()
        self._runs_loaded = runs_loaded  # overlap decisions wait for a complete runs view
        self._is_armed = is_armed  # False once a task is killed or deleted: stop retrying
        self._gate = asyncio.Semaphore(settings.max_concurrent_fires)
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, task_id: str) -> None:
        self._locks.pop(task_id, None)

    async def carry_out(self, task: TaskRecord, steps: list[Step]) -> None:
        """Every step of one task's plan, in order; bus errors are retried, not lost."""
        async with self._gate:
            if task.overlap is Overlap.ALLOW:
                await self._steps(task, steps)
            else:  # overlap decisions need the previous fire of this task to have landed
                async with self._locks.setdefault(task.key, asyncio.Lock()):
                    await self._steps(task, steps)

    async def _steps(self, task: TaskRecord, steps: list[Step]) -> None:
        for step in steps:
            delay = RETRY_MIN_S
            while self._is_armed(task.key):
                try:
                    if step.action is Action.MISSED:
                        await self.skip(task, step.instant, step.reason)
                    else:
                        await self.fire(task, step.instant)
                    break
                except Exception as exc:  # the bus is away: retry, the instant is not lost
                    log.warning(
                        "fire task=%s instant=%s failed (%s); retrying in %.1f s",
                        task.id,
                        step.instant.isoformat(),
                        exc,
                        delay,
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)

    async def fire(self, task: TaskRecord, instant: datetime) -> None:
        if task.overlap is not Overlap.ALLOW:
            await self._runs_loaded.wait()
            own = dispatch.run_id_for(task.id, instant)
            active = [run_id for run_id in self.book.active(task.key) if run_id != own]
            if active and task.overlap is Overlap.FORBID:
                await self.skip(task, instant, policy.OVERLAP)
                return
            if active:
                await self._replace(task, instant, active)
        record, created = await dispatch.enqueue_run(self.bus, task, instant=instant)
        self._fired(task, instant, record, created)

    async def fire_many(
        self, fires: list[tuple[TaskRecord, datetime]]
    ) -> list[tuple[TaskRecord, datetime]]:
        """On-time fires of ``allow`` tasks, pipelined ``max_concurrent_fires`` at a time (a
        burst's fast path); returns the ones that failed, for ``carry_out`` to retry."""
        failed: list[tuple[TaskRecord, datetime]] = []
        size = self.settings.max_concurrent_fires
        for start in range(0, len(fires), size):
            # A task killed or deleted while earlier chunks were in flight fires no more.
            chunk = [fire for fire in fires[start : start + size] if self._is_armed(fire[0].key)]
            outcomes = await dispatch.enqueue_fires(self.bus, chunk)
            for (task, instant), outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.warning(
                        "fire task=%s instant=%s failed (%s); retrying",
                        task.id,
                        instant.isoformat(),
                        outcome,
                    )
                    failed.append((task, instant))
                else:
                    self._fired(task, instant, *outcome)
        return failed

    def _fired(self, task: TaskRecord, instant: datetime, record: RunRecord, created: bool) -> None:
        lag_ms = (utcnow() - instant).total_seconds() * 1000
        if created:
            self.stats["fired"] += 1
            log.info(
                "→ fire task=%s instant=%s run=%s lag_ms=%.1f",
                task.id,
                instant.isoformat(),
                record.run_id,
                lag_ms,
            )
        else:
            self.stats["peer"] += 1
            log.info(
                "= fire task=%s instant=%s run=%s already recorded (%s)",
                task.id,
                instant.isoformat(),
                record.run_id,
                record.status,
            )

    async def _replace(self, task: TaskRecord, instant: datetime, active: list[str]) -> None:
        """Ask the executor to stop the active runs, and wait (bounded) until they ended."""
        reason = f"replaced by the fire of {instant.isoformat()}"
        for run_id in active:
            await dispatch.request_run_kill(self.bus, task, run_id, reason)
            log.info("↻ replace task=%s run=%s by instant=%s", task.id, run_id, instant)
        self.stats["replaced"] += len(active)
        if not await self.book.wait_ended(task.key, active, self.settings.replace_wait_s):
            log.warning(
                "replace task=%s: run(s) %s still active after %.0f s; starting the new run anyway",
                task.id,
                ", ".join(active),
                self.settings.replace_wait_s,
            )

    async def skip(self, task: TaskRecord, instant: datetime, reason: str) -> None:
        record = await dispatch.record_skipped_run(self.bus, task, instant, reason)
        if record is None:
            # That instant already has a record: a peer's, or ours from before a restart. If
            # it is still pending, its request may never have gone out (stopped between the
            # two steps): publish it, as a fire would (de-duplicated; an executor that took it
            # already terminates the copy). Anything else is left as it is.
            await dispatch.enqueue_run(self.bus, task, instant=instant)
            return
        self.stats["overlap" if reason == policy.OVERLAP else "missed"] += 1
        log.info(
            "⊘ skip task=%s instant=%s run=%s reason=%s",
            task.id,
            instant.isoformat(),
            record.run_id,
            reason,
        )

    async def start_next(
        self, task: TaskRecord, previous: RunRecord | None, delay_s: float
    ) -> None:
        """Start a continuous task's next run (its id derived from the previous run's)."""
        run_id = policy.chain_run_id(task.id, previous.run_id if previous else None)
        delay = RETRY_MIN_S
        async with self._gate:
            while self._is_armed(task.key):
                try:
                    record, created = await dispatch.enqueue_run(self.bus, task, run_id=run_id)
                    break
                except Exception as exc:  # the bus is away: retry
                    log.warning("continue task=%s failed (%s); retrying", task.id, exc)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            else:
                return
        if created:
            self.stats["continued"] += 1
            log.info(
                "→ continue task=%s run=%s after=%s (%s) backoff_s=%.0f",
                task.id,
                record.run_id,
                previous.run_id if previous else "-",
                previous.status if previous else "first run",
                delay_s,
            )
