"""The scheduler daemon end to end: real server, real `python -m broker.scheduler` processes.

Seconds-level schedules keep each test to seconds. No sleep synchronises anything: tests wait
on run records through a KV watch, with bounded timeouts. (Two tests let time pass on purpose:
the downtime of a killed scheduler, and the window in which a paused task must stay silent.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec
import pytest

from broker import catalog, dispatch, names, store
from broker.connection import Bus, connect
from broker.errors import InvalidSchedule, OrchestrationNotReady
from broker.models import OrchestrationRecord, RunRecord, SchedulerMark, TaskRecord, utcnow
from broker.server import EmbeddedServer
from broker.status import OrchestrationStatus, RunStatus, TaskKind
from tests.helpers import Daemon, make_zip

EVERY_SECOND = "* * * * * *"
SCHEDULER = "broker.scheduler"


# --- Helpers (also used by test_scheduler_runs.py) ---------------------------------------------
class RunLog:
    """Every run record on the bus, kept current by a KV watch, with bounded waits."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.runs: dict[str, RunRecord] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunLog:
        ready = asyncio.Event()

        async def follow() -> None:
            async for key, record in store.watch(self.bus.runs, RunRecord):
                if not key:
                    ready.set()
                elif record is not None:
                    self.runs[key] = record
                    self._changed.set()

        self._task = asyncio.create_task(follow())
        await asyncio.wait_for(ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def of(self, task_id: str) -> list[RunRecord]:
        """Runs of one task, oldest first (by instant for scheduled runs, else creation)."""
        runs = [r for r in self.runs.values() if r.task_id == task_id]
        return sorted(runs, key=lambda r: (r.instant or r.created_at, r.created_at))

    async def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def stays(self, what: str, predicate: Callable[[], bool], duration_s: float) -> None:
        """Assert ``predicate`` holds for ``duration_s`` (checked at every change)."""
        deadline = time.monotonic() + duration_s
        while (remaining := deadline - time.monotonic()) > 0:
            assert predicate(), what
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        assert predicate(), what


async def wait_for_output(daemon: Daemon, text: str, timeout_s: float = 20.0) -> None:
    """Wait for a line in a daemon's own log (its readiness signal); fail if it dies."""
    deadline = time.monotonic() + timeout_s
    while text not in daemon.output():
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited:\n{daemon.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} after {timeout_s} s:\n{daemon.output()}")
        await asyncio.sleep(0.02)


async def start_scheduler(start_daemon: Callable[..., Daemon], url: str, *args: str) -> Daemon:
    daemon = start_daemon(SCHEDULER, "--url", url, *args)
    await wait_for_output(daemon, "scheduler ready")
    return daemon


async def orchestration(bus: Bus, files: dict[str, str] | None = None) -> OrchestrationRecord:
    data = make_zip(files or {"main.py": "print('hello')\n"})
    return await catalog.upload_orchestration(bus, data, name="sched", file_name="sched.zip")


async def scheduled(bus: Bus, orch: OrchestrationRecord, schedule: str, **kw: str) -> TaskRecord:
    return await catalog.create_task(
        bus, orch, name=f"every {schedule}", kind=TaskKind.SCHEDULED, schedule=schedule, **kw
    )


def second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


# --- Bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "error", "expected"),
    [
        ({"schedule": "* * * *"}, InvalidSchedule, "it has 4 fields"),
        ({"schedule": "0 25 * * *"}, InvalidSchedule, "the hour field '25'"),
        ({"schedule": "*/5 * * * * 99"}, InvalidSchedule, "the second field '99'"),
        ({"schedule": "lunch time"}, InvalidSchedule, "2 fields"),
        ({"schedule": "x * * * *"}, InvalidSchedule, "the minute field 'x'"),
        ({"tz": "Europe/Atlantis"}, InvalidSchedule, "Unknown time zone 'Europe/Atlantis'"),
        ({"overlap": "sometimes"}, InvalidSchedule, "use one of allow, forbid, replace"),
        ({"missed": "never"}, InvalidSchedule, "policy 'never': use one of latest"),
    ],
)
async def test_bad_schedule_input_is_a_clear_error_and_stores_nothing(
    bus: Bus, changes: dict[str, str], error: type[Exception], expected: str
) -> None:
    orch = await orchestration(bus)
    arguments = {"schedule": "*/5 * * * *", "tz": "UTC", **changes}
    with pytest.raises(error) as caught:
        await catalog.create_task(bus, orch, name="bad", kind=TaskKind.SCHEDULED, **arguments)
    assert expected in str(caught.value)
    assert await catalog.list_tasks(bus) == []
    assert await store.scan(bus, names.RUNS, RunRecord) == {}


async def test_scheduling_an_orchestration_in_error_is_refused(bus: Bus) -> None:
    orch = await orchestration(bus)

    def broken(record: OrchestrationRecord) -> OrchestrationRecord:
        return msgspec.structs.replace(
            record, status=OrchestrationStatus.ERROR, error="No matching distribution for nope"
        )

    await store.update(bus.orchestrations, orch.key, OrchestrationRecord, broken)
    with pytest.raises(OrchestrationNotReady, match="No matching distribution for nope"):
        await scheduled(bus, orch, "*/5 * * * *")
    assert await catalog.list_tasks(bus) == []


# --- Exactly once --------------------------------------------------------------------------------
async def test_two_schedulers_and_a_restart_fire_each_instant_exactly_once(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    first = await start_scheduler(start_daemon, nats_url)
    await start_scheduler(start_daemon, nats_url)
    orch = await orchestration(bus)
    async with RunLog(bus) as log:
        task = await scheduled(bus, orch, EVERY_SECOND)
        await log.wait_for("8 fires", lambda: len(log.of(task.id)) >= 8, 15)
        first.kill()  # SIGKILL one of them mid-stream, then bring it back
        await start_scheduler(start_daemon, nats_url)
        await log.wait_for("22 fires", lambda: len(log.of(task.id)) >= 22, 30)
        await catalog.set_task_flags(bus, task.id, killed=True)
        killed_at = utcnow()
        await log.stays(
            "no fire after the kill",
            lambda: all(
                r.instant and r.instant <= killed_at + timedelta(seconds=1) for r in log.of(task.id)
            ),
            1.5,
        )
    runs = log.of(task.id)
    instants = [r.instant for r in runs]
    assert all(i is not None for i in instants)
    first_instant = second(task.created_at) + timedelta(seconds=1)
    expected = [first_instant + timedelta(seconds=n) for n in range(len(runs))]
    assert instants == expected  # every second, none twice, none missing
    for run in runs:
        assert run.instant is not None
        assert run.run_id == dispatch.run_id_for(task.id, run.instant)
        assert run.status is RunStatus.PENDING and run.reason == ""
    # One request per run on the queue: the de-duplication held too.
    info = await bus.js.stream_info(names.RUNQ_STREAM)
    assert info.state.messages == len(runs)


# --- Downtime ------------------------------------------------------------------------------------
async def test_a_killed_and_restarted_scheduler_follows_each_missed_policy(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    """Instants T1..T4 (explicit seconds): the scheduler fires T1, is SIGKILLed, misses T2 and
    T3, and is back (T3 now late) before T4. latest: T3 runs, T2 missed. skip: both missed.
    all: both run. T4 runs everywhere. Every instant has exactly one record."""
    daemon = await start_scheduler(start_daemon, nats_url)
    orch = await orchestration(bus)
    base = second(utcnow()) + timedelta(seconds=3)
    t1, t2, t3, t4 = (base + timedelta(seconds=s) for s in (0, 1, 2, 9))
    schedule = ",".join(str(t.second) for t in sorted((t1, t2, t3, t4), key=lambda t: t.second))
    schedule = f"* * * * * {schedule}"
    async with RunLog(bus) as log:
        tasks = {
            policy: await scheduled(bus, orch, schedule, missed=policy)
            for policy in ("latest", "skip", "all")
        }

        def have(instant: datetime) -> bool:
            return all(any(r.instant == instant for r in log.of(t.id)) for t in tasks.values())

        await log.wait_for("T1 fired", lambda: have(t1), 10)
        daemon.kill()
        downtime_s = (t3 + timedelta(seconds=2.6) - utcnow()).total_seconds()
        await asyncio.sleep(max(0.0, downtime_s))  # the outage itself: T2 and T3 pass unseen
        assert not have(t2) and not have(t3)
        await start_scheduler(start_daemon, nats_url)
        await log.wait_for("T2, T3 recorded", lambda: have(t2) and have(t3), 10)
        await log.wait_for("T4 fired", lambda: have(t4), 15)
        for task in tasks.values():
            await catalog.set_task_flags(bus, task.id, killed=True)

    def outcome(policy: str) -> list[str]:
        runs = log.of(tasks[policy].id)
        assert [r.instant for r in runs] == [t1, t2, t3, t4], policy
        for r in runs:
            assert r.instant is not None and r.run_id == dispatch.run_id_for(r.task_id, r.instant)
        return ["fired" if r.status is RunStatus.PENDING else r.reason for r in runs]

    assert outcome("latest") == ["fired", "missed", "fired", "fired"]
    assert outcome("skip") == ["fired", "missed", "missed", "fired"]
    assert outcome("all") == ["fired", "fired", "fired", "fired"]
    for run in log.of(tasks["skip"].id)[1:3]:
        assert run.status is RunStatus.SKIPPED and run.started_at is None
    mark = await store.get(bus.scheduler, names.SCHEDULER_WATERMARK, SchedulerMark)
    assert mark is not None and mark[0].last_instant >= t3


async def test_fires_whose_requests_never_went_out_are_sent_after_a_restart(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    """With the run queue gone, fires create their pending records but cannot publish their
    requests; the scheduler stopped then (its grace running out) must not move the watermark
    past them, and once the queue is back the restarted one publishes every one of them:
    no run stays pending for ever."""
    orch = await orchestration(bus)
    daemon = await start_scheduler(start_daemon, nats_url, "--shutdown-grace", "0.5")
    await bus.js.delete_stream(names.RUNQ_STREAM)  # after the scheduler provisioned it
    async with RunLog(bus) as log:
        task = await scheduled(bus, orch, EVERY_SECOND)
        await log.wait_for("two stranded fires", lambda: len(log.of(task.id)) >= 2, 10)
        assert daemon.stop() == 0
        stranded = log.of(task.id)
        assert all(run.status is RunStatus.PENDING for run in stranded)
        mark = await store.get(bus.scheduler, names.SCHEDULER_WATERMARK, SchedulerMark)
        assert mark is None or mark[0].last_instant < min(r.instant for r in stranded if r.instant)

        requests: list[str] = []
        await (await connect(bus.settings)).close()  # provisions the run queue again
        sub = await bus.js.subscribe(names.runq_subject(names.DEFAULT_POOL), durable="probe")
        await start_scheduler(start_daemon, nats_url)
        async with asyncio.timeout(20):
            while not {r.run_id for r in stranded} <= set(requests):
                msg = await sub.next_msg(timeout=20)
                requests.append(msgspec.json.decode(msg.data)["run_id"])
        await catalog.set_task_flags(bus, task.id, killed=True)
        await sub.unsubscribe()  # else closing the bus drains it until nats-py's 30 s timeout


# --- Pause, resume, kill, new tasks: within a second ----------------------------------------------
async def test_new_paused_resumed_and_killed_tasks_take_effect_within_a_second(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = await start_scheduler(start_daemon, nats_url)
    orch = await orchestration(bus)
    one_s = timedelta(seconds=1)
    async with RunLog(bus) as log:
        task = await scheduled(bus, orch, EVERY_SECOND)
        await log.wait_for("the first fire", lambda: bool(log.of(task.id)), 3)
        first = log.of(task.id)[0]
        assert first.instant == second(task.created_at) + one_s
        assert first.created_at - first.instant < one_s  # fired on time, not caught up

        def instants() -> list[datetime]:
            return [r.instant for r in log.of(task.id) if r.instant is not None]

        paused = (await catalog.set_task_flags(bus, task.id, paused=True)).updated_at
        await log.stays(
            "no fire more than 1 s after pause()",
            lambda: max(instants()) <= paused + one_s,
            2.5,
        )
        resumed = (await catalog.set_task_flags(bus, task.id, paused=False)).updated_at
        await log.wait_for("a fire after resume()", lambda: max(instants()) > resumed, 3)
        after = [i for i in instants() if i > paused + one_s]
        assert min(after) <= resumed + one_s  # resume took effect within a second
        assert min(after) > resumed  # and the paused period was not replayed

        killed = (await catalog.set_task_flags(bus, task.id, killed=True)).updated_at
        await log.stays(
            "no fire more than 1 s after kill()",
            lambda: max(instants()) <= killed + one_s,
            2.0,
        )
    assert all(r.status is RunStatus.PENDING for r in log.of(task.id))
    # SIGTERM: a clean exit with its one-line summary.
    assert daemon.stop() == 0
    fired = len(log.of(task.id))
    assert "scheduler stopped after" in daemon.output()
    assert f": {fired} fired, 0 already fired by a peer, 0 missed" in daemon.output()
    assert daemon.output().count("→ fire task=") == fired


# --- Reconnect ------------------------------------------------------------------------------------
async def test_watches_recover_after_the_server_restarts(
    bus: Bus, nats_server: EmbeddedServer, start_daemon: Callable[..., Daemon]
) -> None:
    """A watcher kept across a server restart stays blind until nats-py notices missed
    heartbeats. The scheduler recreates its watches on reconnect: a task created right after
    it fires within seconds."""
    await start_scheduler(start_daemon, nats_server.url)
    orch = await orchestration(bus)
    back = asyncio.Event()

    async def reconnected() -> None:
        back.set()

    bus.on_reconnect.append(reconnected)
    nats_server.stop()
    nats_server.start()
    await asyncio.wait_for(back.wait(), 15)  # our own client is back
    async with RunLog(bus) as log:
        task = await scheduled(bus, orch, EVERY_SECOND)
        # Both clients retry every 2 s: the scheduler is back at most ~2 s after us.
        await log.wait_for("a fire after the restart", lambda: bool(log.of(task.id)), 6)
        await catalog.set_task_flags(bus, task.id, killed=True)


def test_scheduler_cli_rejects_a_bad_log_level(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(SCHEDULER, "--url", "nats://127.0.0.1:1", "--log-level", "LOUD")
    assert daemon.process.wait(20) == 2
    assert "unknown --log-level 'LOUD'" in daemon.output()


def test_scheduler_without_a_server_says_so(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(SCHEDULER, "--url", "nats://127.0.0.1:1")
    assert daemon.process.wait(20) == 3  # the CLI's "not connected"
    assert "Could not connect to NATS at nats://127.0.0.1:1" in daemon.output()
