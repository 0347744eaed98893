"""``taskbus up --no-console``: one line per run event (and executor arrival or loss), live,
until stopped: ``HH:MM:SS task-name run-id status …``."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime

import anyio

from broker import scope, store
from broker.connection import Bus, connect
from broker.models import ExecutorRecord, RunRecord, TaskRecord
from broker.scope import adopt
from broker.settings import ConnectSettings
from broker.text import printable


def _say(text: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {printable(text)}", flush=True)  # noqa: T201 (the command's output)


async def _task_name(bus: Bus, task_key: str, cache: dict[str, str]) -> str:
    if task_key not in cache:
        found = await store.get(bus.tasks, task_key, TaskRecord)
        cache[task_key] = found[0].name if found else "?"
    return cache[task_key]


def describe(run: RunRecord) -> str:
    parts = [run.status.value]
    if run.executor:
        parts.append(f"on {run.executor}")
    if run.exit_code is not None:
        parts.append(f"exit {run.exit_code}")
    if run.started_at and run.finished_at:
        parts.append(f"in {(run.finished_at - run.started_at).total_seconds():.2f}s")
    if run.reason:
        parts.append(f"({run.reason})")
    return " ".join(parts)


async def _runs(bus: Bus, keys: str) -> None:
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    live = False
    async for key, run in store.watch(bus.runs, RunRecord, keys, bus=bus):
        if not key:  # caught up (again, after a reconnect: the replay repeats what we saw)
            if not live:
                active = sum(1 for status in seen.values() if status in ("pending", "running"))
                _say(f"runs on record: {len(seen)} ({active} pending or running)")
            live = True
            continue
        if run is None or (run := adopt(key, run)) is None or seen.get(key) == run.status:
            continue
        seen[key] = run.status
        if live:
            name = await _task_name(bus, run.task_key, names)
            _say(f"{name} {run.run_id} {describe(run)}")


async def _executors(bus: Bus) -> None:
    present: set[str] = set()
    async for key, record in store.watch(bus.executors, ExecutorRecord, bus=bus):
        if not key:
            continue
        if record is None:
            if key in present:
                present.discard(key)
                _say(f"executor {key} gone")
        elif key not in present:
            present.add(key)
            _say(
                f"executor {key} ready on {record.host} (pid {record.pid}, pool {record.pool}, "
                f"{record.slots} slots)"
            )


async def watch(settings: ConnectSettings) -> None:
    """Print events until SIGINT or SIGTERM."""
    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = await connect(settings, reconnect_forever=True)
    try:
        async with anyio.create_task_group() as group:
            for keys in scope.filters(bus.creds):  # the workspaces its credential may see
                group.start_soon(_runs, bus, keys)
            group.start_soon(_executors, bus)
            await stop.wait()
            group.cancel_scope.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with anyio.move_on_after(2, shield=True):
            await bus.close()


def run(settings: ConnectSettings) -> None:
    asyncio.run(watch(settings))
