"""Console benchmark: a big store, key-press latency, and a log burst.

    python tests/bench/bench_console.py [--tasks 10000] [--runs 100000] [--lines 300000]

With 10,000 tasks and 100,000 runs in a real nats-server (seeded with pipelined
``publish_async``), it measures, headless at 140x45 on this machine:

- start → first paint of the Tasks table with rows, → all tasks drawn, → all runs loaded;
- key press → updated screen (cursor moves, filter keystrokes over 10,000 tasks, view
  switches including the 100,000-run Runs view): p50 / p99 / max;
- one run printing lines as fast as a separate publisher process can (the way an executor
  publishes: ordered batches): lines/s the log view takes in, the lag between the last line
  published and it being in the view, and key-press latency during the burst;
- the same at a steady 20,000 lines/s: how far behind real time the view is (p99).

The publisher runs in its own process (``--publish``) so it does not share the UI's CPU time
slice, as an executor would not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from textual import events  # noqa: E402

from broker import names  # noqa: E402
from broker.connection import Bus, connect  # noqa: E402
from broker.models import (  # noqa: E402
    LogBatch,
    LogLine,
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    encode,
)
from broker.server import EmbeddedServer, ServerSettings  # noqa: E402
from broker.settings import ConnectSettings  # noqa: E402
from broker.status import OrchestrationStatus, RunStatus, TaskKind  # noqa: E402
from console.app import TaskbusApp  # noqa: E402
from console.screens.run_logs import RunLogsScreen  # noqa: E402
from console.screens.runs import RunsScreen  # noqa: E402
from console.screens.tasks import TasksScreen  # noqa: E402
from console.widgets.log_view import LogView  # noqa: E402
from console.widgets.record_table import RecordTable  # noqa: E402

SIZE = (140, 45)
BATCH_LINES = 100  # lines per LogBatch, as an executor batches a fast writer


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def summary(label: str, values: list[float]) -> str:
    return (
        f"  {label:<38} n={len(values):<4} p50 {ms(statistics.median(values)):>9}  "
        f"p99 {ms(pct(values, 99)):>9}  max {ms(max(values)):>9}"
    )


# --- seeding -----------------------------------------------------------------------------
async def seed(bus: Bus, tasks: int, runs: int) -> tuple[str, str]:
    """10,000 tasks of every kind and 100,000 runs; returns (task id, run id) to tail."""
    now = datetime.now(UTC)
    pending: list[asyncio.Future[object]] = []

    async def put(bucket: str, key: str, data: bytes) -> None:
        pending.append(await bus.js.publish_async(names.kv_subject(bucket, key), data))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()

    orchestrations = []
    for i in range(20):
        orch = OrchestrationRecord(
            id=str(uuid.uuid4()), name=f"orch-{i}", file_name=f"orch-{i}.zip", sha=f"{i:064x}",
            size=1000, status=OrchestrationStatus.READY, created_at=now, updated_at=now,
        )  # fmt: skip
        orchestrations.append(orch)
        await put(names.ORCHESTRATIONS, orch.key, encode(orch))
    kinds = [TaskKind.RUN_ONCE, TaskKind.SCHEDULED, TaskKind.CONTINUOUS]
    statuses = [RunStatus.SUCCESS] * 6 + [RunStatus.FAILURE, RunStatus.TIMED_OUT, RunStatus.KILLED]
    per_task = max(1, runs // tasks)
    tail = ("", "")
    for i in range(tasks):
        kind = kinds[i % 3]
        task = TaskRecord(
            id=str(uuid.uuid4()), name=f"task-{i:05d}", kind=kind,
            orchestration_id=orchestrations[i % 20].id,
            schedule=f"{i % 60} * * * *" if kind is TaskKind.SCHEDULED else "",
            created_at=now - timedelta(seconds=i), updated_at=now - timedelta(seconds=i),
        )  # fmt: skip
        await put(names.TASKS, task.key, encode(task))
        for j in range(per_task):
            created = now - timedelta(minutes=j * 5 + i % 5)
            status = RunStatus.RUNNING if j == 0 and i % 50 == 0 else statuses[(i + j) % 9]
            run = RunRecord(
                task_id=task.id, run_id=str(uuid.uuid4()), status=status, executor="exec-1",
                exit_code=None if status is RunStatus.RUNNING else 0, created_at=created,
                started_at=created, finished_at=None if status is RunStatus.RUNNING else created,
            )  # fmt: skip
            if i == 0 and j == 0:
                tail = (task.key, run.run_id)
            await put(names.RUNS, run.key, encode(run))
    await asyncio.gather(*pending)
    return tail


# --- measuring the UI ----------------------------------------------------------------------
async def until(pilot: object, predicate: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met")
        await pilot.pause(0.002)  # type: ignore[attr-defined]


async def key(app: TaskbusApp, name: str) -> None:
    """Post a key as the terminal driver does (Pilot.press first waits for the app to be
    idle, which never happens during a flood of messages and would inflate the figure)."""
    char = name if len(name) == 1 else None
    app.post_message(events.Key(name, char))


class Frames:
    """When the app last sent a frame to the terminal (its ``_display``), and what changed."""

    def __init__(self, app: TaskbusApp) -> None:
        self.painted: list[tuple[float, object]] = []
        self.probe: Callable[[], object] = lambda: None
        display = app._display

        def spy(screen: object, renderable: object) -> None:
            display(screen, renderable)  # type: ignore[arg-type]
            if renderable is not None:
                self.painted.append((time.perf_counter(), self.probe()))

        app._display = spy  # type: ignore[method-assign]

    async def timed(
        self, pilot: object, act: Awaitable[None], changed: Callable[[], object]
    ) -> float:
        """Seconds from a key press to the first frame showing its effect."""
        self.painted.clear()
        self.probe = changed
        start = time.perf_counter()
        await act
        await until(pilot, lambda: any(seen for _, seen in self.painted), 10)
        return next(at for at, seen in self.painted if seen) - start


def table(app: TaskbusApp) -> RecordTable:
    return app.screen.query_one(RecordTable)


async def bench_ui(url: str, tasks: int, tail: tuple[str, str], lines: int) -> None:
    app = TaskbusApp(ConnectSettings(urls=[url]))
    frames = Frames(app)
    timed = frames.timed
    started = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        t_running = time.perf_counter() - started
        await until(pilot, lambda: isinstance(app.screen, TasksScreen) and table(app).renders > 0
                    and table(app).keys)  # fmt: skip
        t_first = time.perf_counter() - started
        first_rows = len(table(app).keys)
        await until(pilot, lambda: len(table(app).keys) >= tasks)
        t_tasks = time.perf_counter() - started
        await until(pilot, lambda: "runs" in app.state.loaded)
        t_runs = time.perf_counter() - started
        screen = app.screen
        assert isinstance(screen, TasksScreen)
        await until(pilot, screen.up_to_date)
        t_settled = time.perf_counter() - started
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("start to paint (10,000 tasks, 100,000 runs in the store)")
        print(f"  app running                            {ms(t_running):>9}")
        print(f"  first paint of the table with rows     {ms(t_first):>9}  ({first_rows} rows)")
        print(f"  all {tasks:,} tasks drawn                {ms(t_tasks):>9}")
        print(f"  all {app.state.run_count:,} runs loaded            {ms(t_runs):>9}")
        print(f"  statuses of every task drawn           {ms(t_settled):>9}")
        print(f"  console RSS                            {rss_mb:.0f} MB")

        # key press → repainted screen
        cursor: list[float] = []
        for i in range(200):
            tbl = table(app)
            before = tbl.renders
            name = "down" if i % 40 < 20 else "up"
            cursor.append(await timed(pilot, key(app, name), lambda t=tbl, b=before: t.renders > b))
        filtering: list[float] = []
        await pilot.press("slash")
        for text in ("task-01", "task-02"):
            for char in text:
                tbl = table(app)
                before = tbl.renders
                filtering.append(
                    await timed(pilot, key(app, char), lambda t=tbl, b=before: t.renders > b)
                )
            await pilot.press(*["backspace"] * len(text))
        await pilot.press("escape")
        views: list[float] = []

        def showing(kind: type) -> Callable[[], bool]:
            return lambda: isinstance(app.screen, kind) and app.screen.up_to_date()

        for _ in range(5):
            views.append(await timed(pilot, key(app, "2"), showing(RunsScreen)))
            views.append(await timed(pilot, key(app, "1"), showing(TasksScreen)))
        everything = cursor + filtering + views
        print("key press to updated screen")
        print(summary("cursor up/down (10,000 rows)", cursor))
        print(summary("filter keystroke over 10,000 tasks", filtering))
        print(summary("switch Tasks <-> Runs (100,000 runs)", views))
        print(summary("all key presses", everything))

        # logs
        await pilot.press("1")
        tbl = table(app)
        tbl.select_key(tail[0])
        await pilot.press("l")
        assert isinstance(app.screen, RunLogsScreen)
        view = app.screen.query_one(LogView)
        await bench_logs(url, tail, lines, pilot, view, frames)


async def bench_logs(
    url: str, tail: tuple[str, str], lines: int, pilot: object, view: LogView, frames: Frames
) -> None:
    lags: list[float] = []
    drain = view.doc.drain

    def drained() -> tuple[int, int]:
        """How old the newest line is when the view takes it in (publish → screen)."""
        added, dropped = drain()
        if added:
            lags.append(time.time() - view.doc.lines[-1].ts.timestamp())
        return added, dropped

    view.doc.drain = drained  # type: ignore[method-assign]

    async def burst(count: int, first_seq: int, rate: int) -> tuple[float, float, list[float]]:
        target = view.doc.received + count
        keys: list[float] = []
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publish", url, tail[0], tail[1],
            str(count), str(first_seq), str(rate), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        begin = time.perf_counter()
        first_at: float | None = None
        i = 0
        while view.doc.end < target:
            if first_at is None and view.doc.received > first_seq - 1:
                first_at = time.perf_counter()
            i += 1
            name = "up" if i % 2 else "down"
            before = view.scroll_y
            press = key(view.app, name)  # type: ignore[arg-type]
            keys.append(await frames.timed(pilot, press, lambda b=before: view.scroll_y != b))
            await pilot.pause(0.03)  # type: ignore[attr-defined]
            if time.perf_counter() - begin > 120:
                raise TimeoutError("log view never caught up")
        done_at = time.perf_counter()
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        published_s = float(out.decode().strip().split()[-1])
        ingest_s = done_at - (first_at or begin)
        return published_s, ingest_s, keys

    await until(pilot, lambda: view.lines_map.count >= 0)
    print(f"log view: one run, batches of {BATCH_LINES} lines (a separate publisher process)")
    seq = view.doc.last_seq + 1
    published_s, ingest_s, keys = await burst(lines, seq, 0)
    print(f"  {lines:,} lines as fast as possible: published at {lines / published_s:,.0f} "
          f"lines/s; the view took them in at {lines / ingest_s:,.0f} lines/s")  # fmt: skip
    print(f"  lag of the newest line when drawn      p50 {ms(statistics.median(lags)):>9}  "
          f"p99 {ms(pct(lags, 99)):>9}")  # fmt: skip
    print(summary("key press during the burst", keys))
    lags.clear()
    steady = 20_000
    seconds = 5
    seq = view.doc.last_seq + 1
    published_s, ingest_s, keys = await burst(steady * seconds, seq, steady)
    print(f"  steady {steady:,} lines/s for {seconds} s: lag p50 {ms(statistics.median(lags))}, "
          f"p99 {ms(pct(lags, 99))}, max {ms(max(lags))}")  # fmt: skip
    print(summary("key press at 20,000 lines/s", keys))
    print(
        f"  lines received: {view.doc.end:,}; kept in memory (ring buffer): "
        f"{view.lines_map.count:,}; missing: {view.doc.missing}"
    )


# --- the publisher (a separate process, like an executor) ----------------------------------
async def publish(url: str, task_id: str, run_id: str, count: int, first: int, rate: int) -> None:
    bus = await connect(ConnectSettings(urls=[url]))
    workspace, _, task_id = task_id.partition(".")  # the task's key
    subject = names.logs_subject(workspace, task_id, run_id)
    pending = []
    start = time.perf_counter()
    seq = first
    sent = 0
    while sent < count:
        n = min(BATCH_LINES, count - sent)
        now = datetime.now(UTC)
        lines = [
            LogLine(seq=seq + k, ts=now, stream="stdout",
                    text=f"step {seq + k} loss=0.{(seq + k) % 997:03d} \x1b[32mok\x1b[0m")
            for k in range(n)
        ]  # fmt: skip
        batch = LogBatch(task_id=task_id, run_id=run_id, lines=lines)
        pending.append(await bus.js.publish_async(subject, encode(batch), wait_stall=10))
        seq += n
        sent += n
        if len(pending) > 500:
            await asyncio.gather(*pending)
            pending.clear()
        if rate:
            ahead = sent / rate - (time.perf_counter() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await asyncio.gather(*pending)
    print(f"published {count} {time.perf_counter() - start:.3f}")
    await bus.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedServer(ServerSettings(data_dir=Path(folder), port=0))
        with server:
            bus = await connect(ConnectSettings(urls=[server.url]))
            began = time.perf_counter()
            tail = await seed(bus, args.tasks, args.runs)
            seeded = time.perf_counter() - began
            total = args.tasks + args.runs
            print(f"seeded {args.tasks:,} tasks + {args.runs:,} runs in {seeded:.1f} s "
                  f"({total / seeded:,.0f} records/s, publish_async)")  # fmt: skip
            await bus.close()
            print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
            await bench_ui(server.url, args.tasks, tail, args.lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--publish", nargs=6, metavar="ARG")
    parsed = parser.parse_args()
    if parsed.publish:
        url, task, run, count, first, rate = parsed.publish
        asyncio.run(publish(url, task, run, int(count), int(first), int(rate)))
    else:
        asyncio.run(main(parsed))
