"""Retries (``retries=N``, ``retry_delay_s``): a failed or timed-out attempt is a run record of
its own, with its own logs; its retry is a new record (``attempt`` + 1) that starts no sooner
than its back-off, which doubles per retry; a killed run is never retried. Real executor, real
server, the SDK as users call it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

import sdk
from broker import catalog, dispatch, names, store
from broker.connection import Bus
from broker.models import RunRecord
from broker.status import RunStatus, TaskKind, TaskStatus
from tests.helpers import Daemon
from tests.test_executor import log_lines, texts, upload, wait_line, wait_run

FAILS_TWICE = """
import json, os, sys
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
count = os.path.join(args["dir"], "count")
n = (int(open(count).read()) if os.path.exists(count) else 0) + 1
open(count, "w").write(str(n))
print(f"attempt {n} says hello", flush=True)
sys.exit(0 if n >= 3 else 1)
"""


async def queue_settled(bus: Bus, pool: str = names.DEFAULT_POOL, timeout_s: float = 20.0) -> None:
    """Until the pool's run queue has nothing waiting and nothing unacked: every request was
    settled (the executor enqueues a retry before it acks)."""
    jsm = bus.nc.jsm()
    async with asyncio.timeout(timeout_s):
        while True:
            info = await jsm.consumer_info(names.RUNQ_STREAM, names.runq_consumer(pool))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)  # nothing to subscribe to: the consumer's own counts


async def test_failing_twice_then_succeeding_takes_three_attempts_with_growing_back_off(
    bus: Bus, nats_url: str, executor: Daemon, tmp_path: Path
) -> None:
    orch = await upload(bus, {"main.py": FAILS_TWICE})
    async with sdk.AsyncClient(nats_url) as client:
        task = await (await client.get_orchestration(orch.id)).run_once(
            "flaky", {"dir": str(tmp_path)}, retries=2, retry_delay_s=0.5
        )
        assert task.retries() == 2 and task.pool() == "default"
        assert await task.wait(timeout=60) is TaskStatus.SUCCESS
        runs = list(reversed(await task.last_runs()))  # oldest first
        statuses = [(await run.status(), run.attempt()) for run in runs]

    assert statuses == [
        (RunStatus.FAILURE, 1),
        (RunStatus.FAILURE, 2),
        (RunStatus.SUCCESS, 3),
    ]
    keys = [names.run_key("default", run.task_id(), run.id()) for run in runs]
    records = [found[0] for key in keys if (found := await store.get(bus.runs, key, RunRecord))]
    assert [r.retry_of for r in records] == ["", records[0].run_id, records[1].run_id]
    # Each attempt keeps its own log: its own line, its own start and end.
    for number, record in enumerate(records, start=1):
        lines = await log_lines(bus, record)
        assert texts(lines, "stdout") == [f"attempt {number} says hello"]
        said = "\n".join(texts(lines, "taskbus"))
        assert f"started attempt {number}" in said
        assert ("success" if number == 3 else "failure (exit code 1)") in said
    # The back-off doubles (0.5 s, then 1 s) and no retry starts before it.
    for before, after, delay_s in ((records[0], records[1], 0.5), (records[1], records[2], 1.0)):
        assert before.finished_at is not None and after.not_before is not None
        assert after.not_before - before.finished_at == timedelta(seconds=delay_s)
        assert after.started_at is not None and after.started_at >= after.not_before


async def test_a_timed_out_attempt_is_retried_and_the_last_end_counts(
    bus: Bus, executor: Daemon
) -> None:
    orch = await upload(bus, {"main.py": "import time\nprint('up', flush=True)\ntime.sleep(60)\n"})
    task = await catalog.create_task(
        bus, orch, name="slow", kind=TaskKind.RUN_ONCE, timeout=1, retries=1,
        retry_delay_s=0,
    )  # fmt: skip
    second = await wait_run(
        bus, task.id, lambda run: run.attempt == 2 and run.finished_at is not None
    )
    runs = await catalog.runs_of(bus, task.id)

    assert [(r.status, r.attempt) for r in runs] == [
        (RunStatus.TIMED_OUT, 2),
        (RunStatus.TIMED_OUT, 1),
    ]
    assert second.retry_of == runs[1].run_id
    await queue_settled(bus)
    assert await catalog.status_of(bus, await catalog.get_task(bus, task.id)) == "timed_out"
    assert len(await catalog.runs_of(bus, task.id)) == 2  # no third attempt


@pytest.mark.parametrize("whole_task", [False, True], ids=["one-run", "task"])
async def test_a_killed_run_is_never_retried(bus: Bus, executor: Daemon, whole_task: bool) -> None:
    orch = await upload(bus, {"main.py": "import time\nprint('up', flush=True)\ntime.sleep(60)\n"})
    task = await catalog.create_task(
        bus, orch, name="victim", kind=TaskKind.RUN_ONCE, retries=3, retry_delay_s=0
    )
    running = await wait_run(bus, task.id, lambda run: run.pid > 0)
    await wait_line(bus, running, "up")
    if whole_task:
        await catalog.set_task_flags(bus, task.id, killed=True)
    else:
        await dispatch.request_run_kill(bus, task, running.run_id, "stopped by the test")
    killed = await wait_run(bus, task.id, lambda run: run.status is RunStatus.KILLED)
    await queue_settled(bus)  # the request was acked: a retry would have been enqueued first

    runs = await catalog.runs_of(bus, task.id)
    assert [(r.run_id, r.status, r.attempt) for r in runs] == [(killed.run_id, RunStatus.KILLED, 1)]
