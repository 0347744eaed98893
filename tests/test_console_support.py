"""Helpers for the console tests (this module holds no tests): deterministic records written
straight to the real bus, log batches published as an executor would, and the screen as the
text a person would read."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from broker import names, store
from broker.connection import Bus
from broker.models import (
    ExecutorRecord,
    LogBatch,
    LogLine,
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    encode,
)
from broker.settings import ConnectSettings
from broker.status import RUN_ACTIVE, OrchestrationStatus, RunStatus, TaskKind
from console.app import TaskbusApp
from console.clock import Clock
from console.screens.base import ConsoleScreen

FROZEN = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
SIZE = (140, 45)


def uid(n: int) -> str:
    """A valid, readable, distinct-prefix UUID (short ids in tables differ)."""
    return f"{n:08x}-0000-4000-8000-000000000000"


def make_app(url: str, *, frozen: bool = True, retry_s: float | None = None) -> TaskbusApp:
    clock = Clock.frozen(FROZEN) if frozen else Clock(local=UTC)
    return TaskbusApp(ConnectSettings(urls=[url]), clock=clock, retry_s=retry_s, freeze_gc=False)


async def put_orchestration(
    bus: Bus,
    n: int,
    name: str,
    *,
    status: OrchestrationStatus = OrchestrationStatus.READY,
    error: str = "",
    age_s: float = 3600.0,
    workspace: str = "",
) -> OrchestrationRecord:
    at = FROZEN - timedelta(seconds=age_s)
    record = OrchestrationRecord(
        id=uid(n),
        name=name,
        file_name=f"{name.split()[-1]}.zip",
        sha=f"{n:02x}" * 32,
        size=1234,
        status=status,
        error=error,
        entrypoint="main.py",
        workspace=workspace,
        created_at=at,
        updated_at=at,
    )
    await store.put(bus.orchestrations, record.key, record)
    return record


async def put_task(
    bus: Bus,
    n: int,
    name: str,
    orchestration: OrchestrationRecord,
    *,
    kind: TaskKind = TaskKind.RUN_ONCE,
    schedule: str = "",
    paused: bool = False,
    killed: bool = False,
    updated_ago_s: float = 600.0,
) -> TaskRecord:
    """A task in its orchestration's workspace."""
    record = TaskRecord(
        id=uid(n),
        name=name,
        orchestration_id=orchestration.id,
        kind=kind,
        json_args={"n": n},
        timeout_s=60,
        schedule=schedule,
        paused=paused,
        killed=killed,
        workspace=orchestration.workspace,
        created_at=FROZEN - timedelta(seconds=updated_ago_s + 60),
        updated_at=FROZEN - timedelta(seconds=updated_ago_s),
    )
    await store.put(bus.tasks, record.key, record)
    return record


async def put_run(
    bus: Bus,
    task: TaskRecord,
    n: int,
    status: RunStatus,
    *,
    started_ago_s: float = 300.0,
    took_s: float = 42.0,
    exit_code: int | None = None,
    reason: str = "",
    executor: str = "exec-a",
) -> RunRecord:
    started = FROZEN - timedelta(seconds=started_ago_s)
    active = status in RUN_ACTIVE
    if exit_code is None and not active:
        exit_code = 0 if status is RunStatus.SUCCESS else 1
    record = RunRecord(
        task_id=task.id,
        run_id=uid(n),
        workspace=task.workspace,
        status=status,
        executor="" if status is RunStatus.PENDING else executor,
        exit_code=exit_code,
        reason=reason,
        created_at=started - timedelta(seconds=1),
        started_at=None if status is RunStatus.PENDING else started,
        finished_at=None if active else started + timedelta(seconds=took_s),
        updated_at=started,
    )
    await store.put(bus.runs, record.key, record)
    return record


async def put_executor(
    bus: Bus, ident: str, host: str, *, heartbeat_ago_s: float = 1.0, running: Sequence[str] = ()
) -> ExecutorRecord:
    record = ExecutorRecord(
        id=ident,
        host=host,
        pid=4242,
        pool="default",
        slots=4,
        running=list(running),
        started_at=FROZEN - timedelta(hours=1),
        heartbeat_at=FROZEN - timedelta(seconds=heartbeat_ago_s),
    )
    await store.put(bus.executors, record.id, record)
    return record


async def publish_logs(
    bus: Bus,
    task_key: str,
    run_id: str,
    texts: Sequence[str | tuple[str, str]],
    *,
    first_seq: int = 1,
    eof: bool = False,
    batch: int = 500,
) -> int:
    """Publish lines as an executor does (ordered batches) for the run ``run_id`` of the task
    whose ``TaskRecord.key`` is ``task_key``; returns the next sequence."""
    seq = first_seq
    workspace, _, task_id = task_key.partition(".")
    subject = names.logs_subject(workspace, task_id, run_id)
    pending = []
    for start in range(0, max(1, len(texts)), batch):
        chunk = texts[start : start + batch]
        lines = []
        for item in chunk:
            stream, text = item if isinstance(item, tuple) else ("stdout", item)
            ts = FROZEN - timedelta(seconds=100) + timedelta(milliseconds=seq)
            lines.append(LogLine(seq=seq, ts=ts, stream=stream, text=text))  # type: ignore[arg-type]
            seq += 1
        last = start + batch >= len(texts)
        data = encode(LogBatch(task_id=task_id, run_id=run_id, lines=lines, eof=eof and last))
        pending.append(await bus.js.publish_async(subject, data, wait_stall=5.0))
    await asyncio.gather(*pending)
    return seq


def screen_text(app: App[object]) -> str:
    """The whole screen as plain text, as a person reads it."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text(styles=False)


async def wait_for(
    pilot: Pilot[object], predicate: Callable[[], object], timeout_s: float = 10.0
) -> float:
    """Let the app run until ``predicate()`` holds; returns the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await pilot.pause(0.02)
    return time.monotonic() - start


async def settled(pilot: Pilot[object]) -> None:
    """Wait until the screen on top has drawn the latest state, and that frame is painted."""

    def drawn() -> bool:
        screen = pilot.app.screen
        return not isinstance(screen, ConsoleScreen) or screen.up_to_date()

    await wait_for(pilot, drawn)
    await pilot.pause()


async def wait_loaded(pilot: Pilot[object]) -> None:
    app = pilot.app
    assert isinstance(app, TaskbusApp)
    await wait_for(pilot, lambda: {"tasks", "runs", "orchestrations"} <= app.state.loaded)
    await settled(pilot)


class Standard:
    """The data set most console tests and snapshots share (ids and times are fixed)."""

    hello: OrchestrationRecord
    broken: OrchestrationRecord
    backup: TaskRecord  # scheduled, its runs succeed; a name that looks like markup
    train: TaskRecord  # scheduled, its last run failed
    once: TaskRecord  # run once, running now (with logs)
    ingest: TaskRecord  # continuous, running
    report: TaskRecord  # scheduled, paused
    fresh: TaskRecord  # run once, no run yet
    etl: TaskRecord  # run once, failed
    running: RunRecord  # the run of `once`
    failed: RunRecord  # the last run of `train`


LOG_LINES = 200


def log_text(i: int) -> tuple[str, str]:
    stream = "stderr" if i % 7 == 0 else "stdout"
    return stream, f"line {i} \x1b[31mred\x1b[0m [/bold] [b]x[/b]"


async def seed_standard(bus: Bus) -> Standard:
    data = Standard()
    data.hello = await put_orchestration(bus, 1, "hello", age_s=7200)
    data.broken = await put_orchestration(
        bus,
        2,
        "[bad] deps",
        status=OrchestrationStatus.ERROR,
        error="No solution found when resolving dependencies: nosuchpkg==9 [/bold]",
    )
    hello = data.hello
    data.backup = await put_task(
        bus, 100, "[prod] backup", hello, kind=TaskKind.SCHEDULED, schedule="*/5 * * * *",
        updated_ago_s=2400,
    )  # fmt: skip
    data.train = await put_task(
        bus, 101, "nightly-train", hello, kind=TaskKind.SCHEDULED, schedule="0 2 * * *",
        updated_ago_s=2300,
    )  # fmt: skip
    data.once = await put_task(bus, 102, "hello once", hello, updated_ago_s=2200)
    data.ingest = await put_task(
        bus, 103, "stream ingest", hello, kind=TaskKind.CONTINUOUS, updated_ago_s=2100
    )
    data.report = await put_task(
        bus, 104, "weekly report", hello, kind=TaskKind.SCHEDULED, schedule="0 9 * * 1",
        paused=True, updated_ago_s=2000,
    )  # fmt: skip
    data.fresh = await put_task(bus, 105, "fresh", hello, updated_ago_s=60)
    data.etl = await put_task(bus, 106, "etl once", hello, updated_ago_s=1800)
    await put_run(bus, data.etl, 1040, RunStatus.FAILURE, started_ago_s=1900, took_s=3.5)
    for i in range(3):
        await put_run(bus, data.backup, 1000 + i, RunStatus.SUCCESS, started_ago_s=300 * (i + 1))
    await put_run(bus, data.train, 1010, RunStatus.SUCCESS, started_ago_s=90000)
    data.failed = await put_run(
        bus, data.train, 1011, RunStatus.FAILURE, started_ago_s=3600, reason="exit code 1"
    )
    data.running = await put_run(bus, data.once, 1020, RunStatus.RUNNING, started_ago_s=125)
    await put_run(bus, data.ingest, 1030, RunStatus.SUCCESS, started_ago_s=900)
    await put_run(bus, data.ingest, 1031, RunStatus.RUNNING, started_ago_s=600)
    await put_executor(bus, "exec-a", "host-a", running=[names.run_token(data.running.key)])
    await put_executor(bus, "exec-b", "host-b", heartbeat_ago_s=30)
    await publish_logs(
        bus, data.once.key, data.running.run_id, [log_text(i) for i in range(LOG_LINES)]
    )
    return data


async def wait_ready(bus: Bus, orchestration_id: str, timeout_s: float = 60.0) -> None:
    """Wait until the executor has packaged an orchestration (a KV watch, not a poll)."""
    async with asyncio.timeout(timeout_s):
        async for key, record in store.watch(bus.orchestrations, OrchestrationRecord):
            if key.endswith(f".{orchestration_id}") and record is not None:
                if record.status is OrchestrationStatus.ERROR:
                    raise AssertionError(f"packaging failed: {record.error}")
                if record.status is OrchestrationStatus.READY:
                    return


async def wait_runs_ended(bus: Bus, task_id: str, timeout_s: float = 30.0) -> None:
    """Wait until no run of a task is pending or running (a KV watch)."""
    runs: dict[str, RunRecord] = {}
    async with asyncio.timeout(timeout_s):
        async for key, record in store.watch(bus.runs, RunRecord, f"*.{task_id}.*"):
            if record is not None:
                runs[key] = record
            if runs and all(run.status not in RUN_ACTIVE for run in runs.values()):
                return
