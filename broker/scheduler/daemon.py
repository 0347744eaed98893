"""The scheduler daemon: watches tasks and runs, keeps every armed task's next fire in a heap,
and fires each instant exactly once however many schedulers run.

Exactly once, without a leader: a fire's run id is derived from (task, instant) and its record
is created with KV ``create()``, which only one writer can win; the request is published with
``Nats-Msg-Id = <task>@<instant>``. So two schedulers (HA) both fire, and the bus keeps one run
per instant; a restarted one resumes from the watermark and re-creates nothing. No lease means no
fail-over gap and no split-brain window to reason about; the price is a second, refused
``create()`` per fire.

Reading guide: ``_on_task`` (the tasks watch) arms and disarms; ``_clock`` pops what is due;
``_due_scheduled`` plans (``policy.plan``) and ``Firing.carry_out`` (firing.py) does it on the
bus; ``_continue`` drives continuous tasks from the runs watch.

Trace "a cron instant becoming a run request", one hop per module, each docstring naming the
next:

1. ``broker.scheduler.daemon`` (here): the tasks watch arms each task at its next instant
   (``broker.cron.next_fire``, in the task's time zone), ``_clock`` pops what is due;
2. ``broker.scheduler.timetable``: the heap of next instants the clock sleeps on;
3. ``broker.scheduler.policy``: which due instants run, and which are recorded missed/skipped;
4. ``broker.scheduler.firing``: the plan carried out on the bus, idempotently;
5. ``broker.dispatch``: the pending run record (KV ``create()``), then the ``RunRequest`` on
   the run queue — where the trace "a run request becoming a process" goes on;
6. ``broker.publisher``: the stream's acknowledgements for a burst of fires, one inbox.

next: ``broker.scheduler.timetable``, then ``broker.scheduler.policy``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from broker import cron, dispatch, names, scope, store
from broker.connection import Bus
from broker.follow import Follow
from broker.models import RunRecord, TaskRecord, decode, utcnow
from broker.scheduler import policy
from broker.scheduler.firing import Firing
from broker.scheduler.marks import Watermark
from broker.scheduler.policy import Action, Step
from broker.scheduler.runbook import RunBook
from broker.scheduler.settings import SchedulerSettings
from broker.scheduler.timetable import Timetable
from broker.status import RUN_ACTIVE, Overlap, TaskKind, will_retry

log = logging.getLogger("broker.scheduler")


class Scheduler:
    def __init__(self, bus: Bus, settings: SchedulerSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.watermark = Watermark(bus.scheduler)
        self._resume_from: datetime | None = None  # the watermark read at start
        # The oldest instant of every plan still being carried out (the watermark stays
        # below them), and the time up to which everything due has been planned.
        self._inflight: Counter[datetime] = Counter()
        self._planned_until: datetime | None = None
        self.book = RunBook()
        self.timetable = Timetable()
        self.tasks: dict[str, TaskRecord] = {}  # scheduled and continuous, not killed
        # Every task seen, with its last "run now" ask (``_start_asked``).
        self._asked: dict[str, datetime | None] = {}
        self.anchors: dict[str, datetime] = {}  # scheduled: instants up to here are handled
        self._wake = asyncio.Event()
        self._restart = asyncio.Event()
        self._online = asyncio.Event()
        self._online.set()
        self._runs_ready = False
        self._runs_loaded = asyncio.Event()  # overlap decisions wait for a complete runs view
        # The runs watch starts with the first task that needs it (continuous, or an overlap
        # policy): with only "allow" tasks, every fire's run record would cross it for nothing.
        self._runs_wanted = asyncio.Event()
        self.firing = Firing(bus, settings, self.book, self._runs_loaded, self.tasks.__contains__)
        self.stats = self.firing.stats
        self._fires: anyio.abc.TaskGroup | None = None

    # --- Life cycle ---------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        """Load, fire until ``stop`` is set, then let fires in flight finish, write the
        watermark."""
        started = time.monotonic()
        self._resume_from = await self.watermark.load()
        self.bus.on_reconnect.append(self._reconnected)
        self.bus.on_disconnect.append(self._disconnected)
        async with anyio.create_task_group() as fires:
            self._fires = fires
            async with anyio.create_task_group() as background:
                await background.start(self._watches)
                kinds = Counter(task.kind for task in self.tasks.values())
                log.info(
                    "scheduler ready: %d scheduled and %d continuous tasks loaded in %.0f ms "
                    "(watermark %s)",
                    kinds[TaskKind.SCHEDULED],
                    kinds[TaskKind.CONTINUOUS],
                    (time.monotonic() - started) * 1000,
                    self._resume_from.isoformat() if self._resume_from else "none",
                )
                background.start_soon(self._clock)
                background.start_soon(self._flush_watermark)
                await stop.wait()
                background.cancel_scope.cancel()
            fires.cancel_scope.deadline = anyio.current_time() + self.settings.shutdown_grace_s
        if self._online.is_set():
            with anyio.move_on_after(self.settings.shutdown_grace_s):
                await self._write_watermark()

    def summary(self, elapsed_s: float) -> str:
        """The line logged at shutdown: what was fired, missed, skipped; what is armed."""
        stats = self.stats
        return (
            f"scheduler stopped after {elapsed_s:.1f} s: {stats['fired']} fired, "
            f"{stats['peer']} already fired by a peer, {stats['missed']} missed, "
            f"{stats['overlap']} skipped for overlap, {stats['replaced']} replaced, "
            f"{stats['continued']} continuous runs started, {len(self.timetable)} tasks armed"
        )

    async def _reconnected(self) -> None:
        self._online.set()
        self._restart.set()  # a watcher kept across a server restart stays blind for long seconds

    async def _disconnected(self) -> None:
        self._online.clear()

    # --- Watches ------------------------------------------------------------------------------
    async def _watches(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        first = True
        while True:
            self._restart = asyncio.Event()
            try:
                async with anyio.create_task_group() as group:
                    await group.start(self._watch_tasks)
                    if self._runs_wanted.is_set():
                        await group.start(self._watch_runs)
                    else:
                        group.start_soon(self._watch_runs_once_wanted)
                    if first:
                        first = False
                        task_status.started()
                    else:
                        log.info("watches recreated: %d tasks armed", len(self.timetable))
                    await self._restart.wait()
                    group.cancel_scope.cancel()
            except Exception as exc:  # the bus went away under a watch: recreate it
                log.warning("watch failed (%s); recreating it in 1 s", exc)
                await anyio.sleep(1.0)

    async def _watch_tasks(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        seen: set[str] | None = set()
        async for key, stored in store.watch(self.bus.tasks, TaskRecord):
            # Keyed by the task's key, never its id alone: a user may give a task of its own
            # workspace any id, even one of another workspace's tasks.
            record = None if stored is None else scope.adopt(key, stored)
            if stored is not None and record is None:
                log.warning("ignoring the task record at malformed key %r", key)
                continue
            if seen is None:
                self._apply_task(key, record)
            elif key:
                seen.add(key)
                self._apply_task(key, record)
            else:  # caught up: tasks deleted while we were away are gone
                for gone in set(self.tasks) - seen:
                    self._apply_task(gone, None)
                seen = None
                task_status.started()

    def _apply_task(self, key: str, record: TaskRecord | None) -> None:
        """``_on_task``; a record it cannot handle (written by hand: users write their tasks'
        records) is logged and skipped, never allowed to stop the watch every task needs."""
        try:
            self._on_task(key, record)
        except Exception:
            log.exception("skipping the task record at %r that cannot be scheduled", key)

    async def _watch_runs_once_wanted(self) -> None:
        await self._runs_wanted.wait()
        await self._watch_runs(task_status=anyio.TASK_STATUS_IGNORED)

    async def _watch_runs(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._runs_ready = False
        self._runs_loaded.clear()
        self.book.clear()
        async with Follow.bucket(self.bus.js, names.RUNS) as watcher:
            async for entry in watcher:
                if entry.caught_up:
                    if not self._runs_ready:
                        self._runs_ready = True
                        self._runs_loaded.set()
                        for task_id, known in list(self.tasks.items()):
                            if known.kind is TaskKind.CONTINUOUS:
                                self._continue(task_id)
                        task_status.started()
                    continue
                task = self.tasks.get(entry.key.rpartition(".")[0])
                if task is None or not _needs_runs(task):
                    continue  # most runs: decoded by nobody here
                if entry.value is None:  # deleted or expired
                    continue
                run = scope.adopt(entry.key, decode(RunRecord, entry.value))
                if run is None:
                    continue
                self.book.apply(run, keep_history=task.kind is TaskKind.CONTINUOUS)
                if self._runs_ready and task.kind is TaskKind.CONTINUOUS:
                    self._continue(task.key)

    def _on_task(self, task_id: str, record: TaskRecord | None) -> None:
        old = self.tasks.get(task_id)
        if record is not None and record == old:
            return
        if record is None:
            self._asked.pop(task_id, None)
        elif not record.killed:
            seen = task_id in self._asked
            self._start_asked(record, seen, self._asked.get(task_id))
            self._asked[task_id] = record.run_now_at
        if record is None or record.kind is TaskKind.RUN_ONCE or record.killed:
            if old is not None:
                log.info("⊘ stop task=%s (%s)", task_id, "deleted" if record is None else "killed")
                self._forget(task_id)
            return
        self.tasks[task_id] = record
        if _needs_runs(record):
            self._runs_wanted.set()
        if record.paused:
            self.timetable.disarm(task_id)
            if old is not None and not old.paused:
                log.info("⏸ pause task=%s", task_id)
            return
        if old is not None and old.paused:
            log.info("▶ resume task=%s", task_id)
        if record.kind is TaskKind.CONTINUOUS:
            self._continue(task_id)
            return
        if (
            old is None
            or old.paused
            or record.updated_at != old.updated_at
            or ((old.schedule, old.tz) != (record.schedule, record.tz))
        ):
            self.anchors[task_id] = anchor = self._anchor(record, old)
            self._arm(task_id, cron.next_fire(record.schedule, record.tz, anchor))

    def _start_asked(self, task: TaskRecord, seen: bool, last_ask: datetime | None) -> None:
        """Runs users and operators ask for but may not create (the trust boundary: they could
        forge a run's status): a new run-once task's run, and a "run now". Each run id is
        derived from the task and the instant asked, so two schedulers, a restart, or a
        client that may create it itself (the admin) make one run; an ask older than
        ``RUN_ONCE_DEADLINE_S`` (the scheduler was down) is left alone."""
        asks = []
        if task.kind is TaskKind.RUN_ONCE and not seen:
            asks.append(task.created_at)
        if task.run_now_at is not None and task.run_now_at != last_ask:
            asks.append(task.run_now_at)
        now = utcnow()
        for instant in asks:
            if (now - instant).total_seconds() <= names.RUN_ONCE_DEADLINE_S:
                self._spawn(self._start_one, task, dispatch.run_id_for(task.id, instant))

    async def _start_one(self, task: TaskRecord, run_id: str) -> None:
        try:
            _, created = await dispatch.enqueue_run(self.bus, task, run_id=run_id)
        except Exception:
            log.exception("could not start run %s of task %s", run_id, task.id)
            return
        if created:
            log.info("→ start task=%s run=%s (asked for)", task.id, run_id)

    def _anchor(self, task: TaskRecord, old: TaskRecord | None) -> datetime:
        """Where a (re-)armed task resumes: instants after this are due.

        Its last handled instant (this process's, else the watermark, else its creation). A
        resume moves it to the resume time, so the paused period is never replayed. Only
        pause/resume change a live task's record, so a newer ``updated_at`` is a resume even
        when the pause itself was not seen (the scheduler was down or disconnected).
        """
        base = self.anchors.get(task.key) or self._resume_from or task.created_at
        if old is None:
            resumed = task.updated_at > task.created_at
        else:
            resumed = old.paused or task.updated_at > old.updated_at
        if resumed:
            base = max(base, task.updated_at)
        return max(base, task.created_at)

    def _forget(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        self.anchors.pop(task_id, None)
        self.timetable.disarm(task_id)
        self.book.forget(task_id)
        self.firing.forget(task_id)

    # --- The clock ----------------------------------------------------------------------------
    def _arm(self, task_id: str, when: datetime) -> None:
        if self.timetable.arm(task_id, when):
            self._wake.set()

    async def _clock(self) -> None:
        while True:
            if not self._online.is_set():  # fire nothing into a dead connection: on return,
                await self._online.wait()  # what came due meanwhile follows the missed policy
            now = utcnow()
            batch: list[tuple[TaskRecord, list[Step]]] = []
            for task_id, _when in self.timetable.pop_due(now):
                task = self.tasks.get(task_id)
                if task is None:
                    continue
                if task.kind is TaskKind.CONTINUOUS:
                    self._due_continuous(task, now)
                    continue
                steps = self._due_scheduled(task, now)
                if steps:
                    self._inflight[steps[0].instant] += 1
                    batch.append((task, steps))
            self._planned_until = now
            if batch:  # one task per tick, the fires inside it concurrent (cheap to spawn)
                self._spawn(self._run_batch, batch)
            self._wake = asyncio.Event()
            earliest = self.timetable.earliest()
            delay = math.inf if earliest is None else (earliest - utcnow()).total_seconds()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
            else:
                await anyio.lowlevel.checkpoint()  # let fires and watches run between bursts

    async def _flush_watermark(self) -> None:
        while True:
            await anyio.sleep(self.settings.mark_flush_interval_s)
            if self._online.is_set():
                try:
                    await self._write_watermark()
                except Exception as exc:  # the bus is away: the next flush catches up
                    log.warning("could not write the watermark: %s", exc)

    async def _write_watermark(self) -> None:
        if self._inflight:
            await self.watermark.advance(min(self._inflight) - timedelta(microseconds=1))
        elif self._planned_until is not None:
            await self.watermark.advance(self._planned_until)

    # --- Scheduled tasks ----------------------------------------------------------------------
    def _due_scheduled(self, task: TaskRecord, now: datetime) -> list[Step]:
        """Plan the task's due instants (and re-arm it); [] when nothing is due yet."""
        anchor = self.anchors[task.key]
        first = cron.next_fire(task.schedule, task.tz, anchor)
        if first > now:
            self._arm(task.key, first)
            return []
        dropped = None
        if cron.next_fire(task.schedule, task.tz, first) > now:
            due = [first]  # the usual case: one instant, on time
        else:  # downtime, or the loop fell behind: the newest ones one by one, older summarised
            keep = max(self.settings.missed_records_cap, task.missed_cap + 1)
            due = cron.fires_between(task.schedule, task.tz, anchor, now, limit=keep)
            if due[0] > first:
                dropped = (first, cron.prev_fire(task.schedule, task.tz, due[0]))
        steps = policy.plan(task, due, now=now, on_time_s=self.settings.on_time_s, dropped=dropped)
        self.anchors[task.key] = due[-1]
        self._arm(task.key, cron.next_fire(task.schedule, task.tz, due[-1]))
        return steps

    def _spawn(self, func: Any, *args: Any) -> None:
        assert self._fires is not None
        self._fires.start_soon(func, *args)

    async def _run_batch(self, batch: list[tuple[TaskRecord, list[Step]]]) -> None:
        """A tick's plans: on-time fires of ``allow`` tasks (almost all, in a burst) in one
        pipeline; the rest — and any fire that failed there — one task each, with retries."""
        simple: list[tuple[TaskRecord, datetime]] = []
        async with anyio.create_task_group() as group:
            for task, steps in batch:
                if (
                    task.overlap is Overlap.ALLOW
                    and len(steps) == 1
                    and steps[0].action is Action.FIRE
                ):
                    simple.append((task, steps[0].instant))
                else:
                    group.start_soon(self._execute, task, steps)
            failed = await self.firing.fire_many(simple) if simple else []
            retried = {task.key for task, _ in failed}
            for task, instant in simple:
                if task.key in retried:  # still in flight: _execute marks it done
                    group.start_soon(self._execute, task, [Step(instant, Action.FIRE)])
                else:
                    self._done(instant)

    async def _execute(self, task: TaskRecord, steps: list[Step]) -> None:
        await self.firing.carry_out(task, steps)
        # Not in a `finally`: a fire cancelled at shutdown has not landed, so its instant must
        # hold the watermark back (the restarted scheduler fires it).
        self._done(steps[0].instant)

    def _done(self, oldest: datetime) -> None:
        """A plan whose oldest instant is ``oldest`` is carried out (the watermark may pass)."""
        self._inflight[oldest] -= 1
        if self._inflight[oldest] <= 0:
            del self._inflight[oldest]

    # --- Continuous tasks ---------------------------------------------------------------------
    def _continue(self, task_id: str) -> None:
        """Arm a continuous task for its next run, or disarm it while a run is active."""
        task = self.tasks.get(task_id)
        if task is None or task.paused or not self._runs_ready:
            return
        runs = self.book.newest_first(task_id)
        if runs and (runs[0].status in RUN_ACTIVE or will_retry(task, runs[0])):
            self.timetable.disarm(task_id)  # the chain goes on after the run (or its retry)
            return
        when = utcnow()
        if runs:
            when = self._ready_at(runs)
        self._arm(task_id, when)

    def _ready_at(self, runs: list[RunRecord]) -> datetime:
        """When the next run of a continuous task whose runs (newest first) are these may
        start; the newest has ended."""
        return policy.continuous_ready_at(runs, self._delay_s(runs), self.settings.min_interval_s)

    def _delay_s(self, runs: list[RunRecord]) -> float:
        return policy.continuous_delay_s(
            runs,
            backoff_min_s=self.settings.backoff_min_s,
            backoff_max_s=self.settings.backoff_max_s,
            healthy_run_s=self.settings.healthy_run_s,
        )

    def _due_continuous(self, task: TaskRecord, now: datetime) -> None:
        runs = self.book.newest_first(task.key)
        previous = runs[0] if runs else None
        if previous is not None:
            if previous.status in RUN_ACTIVE or will_retry(task, previous):
                return
            ready_at = self._ready_at(runs)
            if ready_at > now:
                self._arm(task.key, ready_at)
                return
        self._spawn(self.firing.start_next, task, previous, self._delay_s(runs) if runs else 0.0)


def _needs_runs(task: TaskRecord) -> bool:
    return task.kind is TaskKind.CONTINUOUS or task.overlap is not Overlap.ALLOW
