"""Executors that die, compete or lose the bus: a run is never run twice at once, a lost
attempt is recorded (and retried when the task allows), a cut-off executor fences itself."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from broker import catalog
from broker.connection import Bus
from broker.server import EmbeddedServer
from broker.status import RunStatus, TaskKind
from tests.helpers import Daemon, wait_for_executors
from tests.test_executor import (
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

FIRST_THEN_SECOND = """
import json, os, sys, time
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
mark = os.path.join(args["dir"], os.environ["TASKBUS_TASK_ID"])
if os.path.exists(mark):
    print("second attempt")
    sys.exit(0)
open(mark, "w").close()
print("first attempt", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def reaping(pids: list[int]) -> Iterator[None]:
    """Kill user processes that outlived their (SIGKILLed) executor, whatever the outcome."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


async def test_a_lost_executor_is_recorded_and_retried_when_allowed(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    first = start_executor(start_daemon, nats_url, tmp_path / "a", "--ack-wait", "1")
    [first_id] = await wait_for_executors(bus, 1)
    marks = tmp_path / "marks"
    marks.mkdir()
    orch = await upload(bus, {"main.py": FIRST_THEN_SECOND})
    args = {"dir": str(marks)}
    once = await run_once(bus, orch, name="once", json_args=args)
    retried = await catalog.create_task(
        bus, orch, name="retried", kind=TaskKind.RUN_ONCE, json_args=args, retries=1
    )
    pids: list[int] = []
    with reaping(pids):
        for task in (once, retried):
            running = await wait_run(bus, task.id, lambda run: run.pid > 0)
            pids.append(running.pid)
            await wait_line(bus, running, "first attempt")
            assert running.executor == first_id

        first.kill()  # the host dies; its user processes carry on in their own sessions
        start_executor(start_daemon, nats_url, tmp_path / "b", "--ack-wait", "1")
        lost = await wait_run(bus, once.id)
        again = await wait_run(bus, retried.id)

    assert (lost.status, lost.reason, lost.attempt) == (RunStatus.FAILURE, "executor lost", 1)
    assert (again.status, again.attempt) == (RunStatus.SUCCESS, 2)
    assert again.executor not in ("", first_id)
    lost_lines = await log_lines(bus, lost)
    assert [line.seq for line in lost_lines] == list(range(1, len(lost_lines) + 1))
    said = "\n".join(texts(lost_lines, "taskbus"))
    assert f"attempt 1 was lost with executor {first_id}" in said
    assert "no retries left" in said
    again_lines = await log_lines(bus, again)
    assert texts(again_lines, "stdout") == ["first attempt", "second attempt"]
    assert "retrying as attempt 2 of 2" in "\n".join(texts(again_lines, "taskbus"))


async def test_two_executors_never_run_one_run_twice(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    for name in ("a", "b"):
        start_executor(start_daemon, nats_url, tmp_path / name, "--slots", "3")
    executors = await wait_for_executors(bus, 2)
    ledger = tmp_path / "ledger"
    main = (
        "import json, os\nargs = json.load(open(os.environ['TASKBUS_ARGS_FILE']))\n"
        "with open(args['ledger'], 'a') as f:\n    f.write(os.environ['TASKBUS_RUN_ID'] + '\\n')\n"
    )
    orch = await upload(bus, {"main.py": main})
    tasks = [await run_once(bus, orch, name=f"r{i}", json_args={"ledger": str(ledger)})
             for i in range(30)]  # fmt: skip
    runs = await wait_runs(bus, [task.id for task in tasks])

    assert {run.status for run in runs.values()} == {RunStatus.SUCCESS}
    assert sorted(ledger.read_text().split()) == sorted(run.run_id for run in runs.values())
    assert {run.executor for run in runs.values()} <= set(executors)


async def test_an_executor_cut_off_from_nats_kills_its_runs(
    bus: Bus,
    nats_url: str,
    nats_server: EmbeddedServer,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    start_executor(start_daemon, nats_url, tmp_path / "ex", "--ack-wait", "1")
    await wait_for_executors(bus, 1)
    orch = await upload(bus, {"main.py": "import time\nprint('up', flush=True)\ntime.sleep(120)\n"})
    task = await run_once(bus, orch)
    running = await wait_run(bus, task.id, lambda run: run.pid > 0)
    await wait_line(bus, running, "up")

    nats_server.stop()  # the executor's host is partitioned from the bus
    with reaping([running.pid]):
        await wait_gone(running.pid)  # fenced: it killed its own run
    nats_server.start()
    run = await wait_run(bus, task.id)

    assert run.status == RunStatus.KILLED
    assert run.reason.startswith("fenced: no contact with NATS for over 1 s")
