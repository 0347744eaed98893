"""Scheduler behaviours that need runs to execute and end: a real executor process runs them.

Continuous tasks (a new run after each one ends, back-off on failures, stop on kill) and the
overlap policies (forbid records a skipped fire, replace kills the running run first).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from broker import catalog, dispatch, store
from broker.connection import Bus
from broker.models import OrchestrationRecord, RunRecord, utcnow
from broker.scheduler import policy
from broker.status import RUN_ACTIVE, RUN_TERMINAL, OrchestrationStatus, RunStatus, TaskKind
from tests.helpers import Daemon
from tests.test_scheduler import EVERY_SECOND, RunLog, orchestration, start_scheduler

# Fails every run except the 4th (a file counts the runs): F F F S F F ...
FLAKY = """\
import json, os, pathlib, sys
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
counter = pathlib.Path(args["counter"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
print("run", n)
sys.exit(0 if n == 4 else 1)
"""

SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"


async def ready(bus: Bus, files: dict[str, str]) -> OrchestrationRecord:
    orch = await orchestration(bus, files)
    async with asyncio.timeout(30):
        async for key, record in store.watch(bus.orchestrations, OrchestrationRecord, orch.key):
            if key and record is not None and record.status is OrchestrationStatus.READY:
                return record
            assert record is None or record.status is not OrchestrationStatus.ERROR, record
    raise AssertionError("unreachable")


@pytest.mark.usefixtures("executor")
async def test_continuous_task_backs_off_on_failures_resets_and_stops_on_kill(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    for _ in range(2):  # two schedulers: each run of the chain must still exist once
        await start_scheduler(start_daemon, nats_url)
    orch = await ready(bus, {"main.py": FLAKY})
    async with RunLog(bus) as log:
        task = await catalog.create_task(
            bus,
            orch,
            name="flaky forever",
            kind=TaskKind.CONTINUOUS,
            json_args={"counter": str(tmp_path / "count")},
        )

        def runs() -> list[RunRecord]:
            return sorted(log.of(task.id), key=lambda r: r.created_at)

        await log.wait_for(
            "5 runs ended and a 6th created",
            lambda: len(runs()) >= 6 and all(r.status in RUN_TERMINAL for r in runs()[:5]),
            40,
        )
        await catalog.set_task_flags(bus, task.id, killed=True)
        killed_at = utcnow()
        await log.wait_for(
            "every run ended", lambda: not any(r.status in RUN_ACTIVE for r in runs()), 20
        )
        # Run 6 failed or was killed: without the kill, a 7th would start 2 s after it.
        await log.stays(
            "no run created after the kill",
            lambda: all(r.created_at <= killed_at for r in runs()),
            3.0,
        )
    history = runs()
    assert history[0].run_id == policy.chain_run_id(task.id, None)
    for previous, current in itertools.pairwise(history):  # one chain, no run twice
        assert current.run_id == policy.chain_run_id(task.id, previous.run_id)
    statuses = [r.status for r in history[:5]]
    failure, success = RunStatus.FAILURE, RunStatus.SUCCESS
    assert statuses == [failure, failure, failure, success, failure]
    gaps = []
    for index, (previous, current) in enumerate(itertools.pairwise(history[:6])):
        # After the success (run 4): no back-off, but 1 s after its start at the soonest (the
        # minimum interval); otherwise the back-off counts from the run's end.
        since = previous.started_at if index == 3 else previous.finished_at
        assert since is not None
        gaps.append((current.created_at - since).total_seconds())
    # 1 s, 2 s, 4 s after 1, 2, 3 consecutive failures; 1 s after a success's start; 1 s again.
    for gap, expected in zip(gaps, [1, 2, 4, 1, 1], strict=True):
        assert expected - 0.05 <= gap <= expected + 1.0, gaps
    assert await catalog.status_of(bus, await catalog.get_task(bus, task.id)) == "killed"


@pytest.mark.usefixtures("executor")
async def test_overlap_forbid_records_skipped_fires_while_a_run_is_active(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    await start_scheduler(start_daemon, nats_url)
    orch = await ready(bus, {"main.py": SLEEPER})
    async with RunLog(bus) as log:
        task = await catalog.create_task(
            bus,
            orch,
            name="one at a time",
            kind=TaskKind.SCHEDULED,
            schedule=EVERY_SECOND,
            overlap="forbid",
        )
        await log.wait_for(
            "a running run and 3 skipped fires",
            lambda: (
                any(r.status is RunStatus.RUNNING for r in log.of(task.id))
                and sum(r.reason == "overlap" for r in log.of(task.id)) >= 3
            ),
            15,
        )
        await catalog.set_task_flags(bus, task.id, killed=True)
        await log.wait_for(
            "the running run killed",
            lambda: not any(r.status in RUN_ACTIVE for r in log.of(task.id)),
            20,
        )
    runs = log.of(task.id)
    real = [r for r in runs if r.reason != "overlap"]
    assert len(real) == 1, runs  # every later fire was refused while it ran
    assert real[0].started_at is not None and real[0].status is RunStatus.KILLED
    for skipped in runs[1:]:
        assert skipped.reason == "overlap" and skipped.status is RunStatus.SKIPPED
        assert skipped.started_at is None
        assert skipped.instant is not None
        assert skipped.run_id == dispatch.run_id_for(task.id, skipped.instant)


@pytest.mark.usefixtures("executor")
async def test_overlap_replace_kills_the_running_run_before_the_next_starts(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    await start_scheduler(start_daemon, nats_url)
    orch = await ready(bus, {"main.py": SLEEPER})
    async with RunLog(bus) as log:
        task = await catalog.create_task(
            bus,
            orch,
            name="newest wins",
            kind=TaskKind.SCHEDULED,
            schedule="* * * * * */2",
            overlap="replace",
        )

        def runs() -> list[RunRecord]:
            return log.of(task.id)

        await log.wait_for(
            "two runs replaced and a third running",
            lambda: (
                len(runs()) >= 3
                and all(r.status is RunStatus.KILLED for r in runs()[:2])
                and runs()[2].status is RunStatus.RUNNING
            ),
            20,
        )
        await catalog.set_task_flags(bus, task.id, killed=True)
        await log.wait_for(
            "the last run killed", lambda: not any(r.status in RUN_ACTIVE for r in runs()), 20
        )
    history = runs()
    for old, new in itertools.pairwise(history):
        assert old.started_at is not None and old.finished_at is not None
        if new.started_at is None:
            continue  # the task kill reached it first
        assert new.created_at >= old.finished_at, "the new run started before the old ended"
        assert old.status is RunStatus.KILLED
        assert "replaced by the fire of" in old.reason, old.reason
    assert all(r.instant is not None for r in history)
    assert history[1].instant - history[0].instant == timedelta(seconds=2)  # type: ignore[operator]
