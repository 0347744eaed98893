"""An executor among others on one host: a shared work dir, a killed executor's processes, a
kill while a run is still being prepared, poison messages on the run queue."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from nats.aio.msg import Msg

from broker import catalog, names
from broker.connection import Bus
from broker.status import OrchestrationStatus, RunStatus
from executor.environments import env_key
from tests.helpers import Daemon, wait_for_executors
from tests.test_executor import (
    SLEEPER,
    log_lines,
    run_once,
    start_executor,
    texts,
    upload,
    wait_gone,
    wait_line,
    wait_run,
    wait_runs,
)

# Waits (in the task itself) for a file, then reads a shipped file from its working copy.
WAIT_THEN_READ = """
import json, os, time
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
print("up", flush=True)
while not os.path.exists(args["go"]):
    time.sleep(0.01)
print(open("data.txt").read())
"""


async def test_two_executors_sharing_a_work_dir_keep_their_run_folders(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    work = tmp_path / "shared"
    start_executor(start_daemon, nats_url, work, "--slots", "2")
    await wait_for_executors(bus, 1)
    go = tmp_path / "go"
    orch = await upload(bus, {"main.py": WAIT_THEN_READ, "data.txt": "shipped"})
    early = [await run_once(bus, orch, name=f"e{i}", json_args={"go": str(go)}) for i in range(2)]
    for task in early:
        await wait_line(bus, await wait_run(bus, task.id, lambda run: run.pid > 0), "up")

    # A second executor on the same work dir starts while the first one's runs are going.
    start_executor(start_daemon, nats_url, work, "--slots", "2")
    await wait_for_executors(bus, 2)
    late = [await run_once(bus, orch, name=f"l{i}", json_args={"go": str(go)}) for i in range(6)]
    go.touch()
    runs = await wait_runs(bus, [task.id for task in early + late])

    failed = {run.task_id: run.reason for run in runs.values() if run.status != RunStatus.SUCCESS}
    assert not failed
    for run in runs.values():
        assert texts(await log_lines(bus, run), "stdout") == ["up", "shipped"]
    assert len({run.executor for run in runs.values()}) == 2


async def test_spawned_runs_die_with_their_executor(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_executor(start_daemon, nats_url, tmp_path / "ex", "--no-zygote")
    await wait_for_executors(bus, 1)
    orch = await upload(bus, {"main.py": SLEEPER})
    running = await wait_run(bus, (await run_once(bus, orch)).id, lambda run: run.pid > 0)
    await wait_line(bus, running, "working")

    daemon.kill()
    await wait_gone(running.pid, timeout_s=5.0)


async def test_a_kill_while_the_environment_is_prepared_ends_the_run(
    bus: Bus, executor: Daemon, tmp_path: Path
) -> None:
    orch = await upload(bus, {"main.py": "print('ran')\n", "requirements.txt": "six==1.16.0\n"})
    assert orch.status == OrchestrationStatus.READY, orch.error
    # Hold the environment's lock as a build elsewhere would: the run waits in preparation.
    fd = os.open(tmp_path / "executor" / "envs" / f"{env_key(orch.lock)}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        task = await run_once(bus, orch)
        await wait_run(bus, task.id, lambda run: run.status == RunStatus.RUNNING)
        await catalog.set_task_flags(bus, task.id, killed=True)
        run = await wait_run(bus, task.id, timeout_s=10.0)
    finally:
        os.close(fd)

    assert (run.status, run.reason, run.pid) == (RunStatus.KILLED, "task killed", 0)
    assert "ran" not in texts(await log_lines(bus, run), "stdout")


async def test_a_malformed_run_request_is_terminated_not_redelivered(
    bus: Bus, executor: Daemon
) -> None:
    acks: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ack(msg: Msg) -> None:
        await acks.put(msg.data)

    sub = await bus.nc.subscribe(f"$JS.ACK.{names.RUNQ_STREAM}.>", cb=on_ack)
    try:
        await bus.js.publish(names.runq_subject(names.DEFAULT_POOL), b"\x00 not json")
        await bus.js.publish(names.runq_subject(names.DEFAULT_POOL), b'{"task_id": 3}')
        async with asyncio.timeout(10.0):
            answers = [await acks.get(), await acks.get()]
    finally:
        await sub.unsubscribe()

    assert answers == [b"+TERM", b"+TERM"]
    # We see an ack as it is published; the server applies it to the consumer a moment later
    # (CI caught num_ack_pending == 1 right after the second +TERM). Poll its state: there is
    # nothing to subscribe to.
    consumer = names.runq_consumer(names.DEFAULT_POOL)
    async with asyncio.timeout(10.0):
        while (info := await bus.js.consumer_info(names.RUNQ_STREAM, consumer)).num_ack_pending:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert info.num_redelivered == 0
