"""Pools (``pool=``, ``--pool``): only executors of a task's pool take its runs, and a run
waiting for a pool that no live executor serves says so in ``reason()``. Real executors of two
pools, a real server, the SDK as users call it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from broker import names, store
from broker.connection import Bus
from broker.errors import TaskbusError
from broker.models import ExecutorRecord, RunRecord, utcnow
from broker.status import RunStatus, TaskStatus
from tests.helpers import Daemon, wait_for_executors
from tests.test_executor import start_executor, upload

WHERE = "import os\nprint('ran', os.environ['TASKBUS_RUN_ID'], flush=True)\n"


async def test_only_executors_of_the_pool_take_its_runs(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    start_executor(start_daemon, nats_url, tmp_path / "cpu")
    start_executor(start_daemon, nats_url, tmp_path / "gpu", "--pool", "gpu")
    await wait_for_executors(bus, 2)
    pools = {
        r.id: r.pool for r in (await store.scan(bus, names.EXECUTORS, ExecutorRecord)).values()
    }
    orch = await upload(bus, {"main.py": WHERE})
    async with sdk.AsyncClient(nats_url) as client:
        o = await client.get_orchestration(orch.id)
        on_gpu = [await o.run_once(f"g{i}", pool="gpu") for i in range(4)]
        on_default = [await o.run_once(f"d{i}") for i in range(4)]
        for task in on_gpu + on_default:
            assert await task.wait(timeout=60) is TaskStatus.SUCCESS
        gpu_runs = [(await t.last_runs())[0] for t in on_gpu]
        default_runs = [(await t.last_runs())[0] for t in on_default]
        assert {t.pool() for t in on_gpu} == {"gpu"}

    assert {pools[r.executor()] for r in gpu_runs} == {"gpu"}
    assert {pools[r.executor()] for r in default_runs} == {"default"}


async def test_a_run_for_a_pool_nobody_serves_waits_and_says_so(
    bus: Bus, nats_url: str, executor: Daemon
) -> None:
    orch = await upload(bus, {"main.py": WHERE})
    async with sdk.AsyncClient(nats_url) as client:
        o = await client.get_orchestration(orch.id)
        task = await o.run_once("nobody", pool="big-memory")
        [run] = await task.last_runs()
        assert await run.status() is RunStatus.PENDING
        assert run.reason() == "waiting: no executor serves pool 'big-memory'"
        assert "waiting: no executor serves pool 'big-memory'" in repr(run)
        served = await o.run_once("served")  # the default pool's executor is alive and well
        assert await served.wait(timeout=60) is TaskStatus.SUCCESS
        assert await run.status() is RunStatus.PENDING  # still not taken by another pool
        [ran] = await served.last_runs()
        assert ran.reason() == ""


@pytest.mark.parametrize("pool", ["", "gpu.big", "a b", "*", 3])
async def test_a_bad_pool_name_is_refused_before_anything_is_stored(
    bus: Bus, nats_url: str, pool: object
) -> None:
    orch = await upload(bus, {"main.py": WHERE}, settled=False)
    async with sdk.AsyncClient(nats_url) as client:
        o = await client.get_orchestration(orch.id)
        with pytest.raises(TaskbusError, match="pool must be a name") as caught:
            await o.run_once("bad", pool=pool)  # type: ignore[arg-type]
        assert isinstance(caught.value, ValueError)
        assert len(await client.list_tasks()) == 0


def test_the_console_says_which_pool_a_pending_run_waits_for() -> None:
    from console.state import ConsoleState

    now = utcnow()
    state = ConsoleState(["nats://127.0.0.1:4222"])
    heartbeat = {"host": "h", "pid": 1, "slots": 1, "started_at": now, "heartbeat_at": now}
    state.apply_executor("a", ExecutorRecord(id="a", pool="default", **heartbeat))
    waiting = RunRecord(task_id="t", run_id="r", pool="gpu", created_at=now)
    state.apply_run("t.r", waiting)
    assert state.run_reason(waiting) == "waiting: no executor serves pool 'gpu'"
    state.apply_executor("b", ExecutorRecord(id="b", pool="gpu", **heartbeat))
    assert state.run_reason(waiting) == ""
    ended = RunRecord(task_id="t", run_id="s", pool="tpu", status=RunStatus.FAILURE,
                      reason="exit code 1", created_at=now)  # fmt: skip
    assert state.run_reason(ended) == "exit code 1"
