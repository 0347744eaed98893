"""The executor end to end: a real nats-server, a real `python -m executor` subprocess, real
user processes. Orchestrations and tasks are created exactly as the SDK does (broker.catalog);
every wait is on the bus itself (KV watches) with a bounded timeout."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from broker import catalog, dispatch, logs, names, store
from broker.connection import Bus
from broker.models import (
    ExecutorRecord,
    LogBatch,
    LogLine,
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    decode,
)
from broker.status import (
    ORCHESTRATION_SETTLED,
    RUN_TERMINAL,
    OrchestrationStatus,
    RunStatus,
    TaskKind,
)
from tests.helpers import REPO, Daemon, make_zip


# --- helpers shared by the tests/test_executor*.py files -------------------------------------
async def upload(
    bus: Bus, files: dict[str, str], *, settled: bool = True, timeout_s: float = 60.0
) -> OrchestrationRecord:
    """Upload a zip of ``files``; with ``settled``, wait until packaging ended."""
    record = await catalog.upload_orchestration(
        bus, make_zip(files), name="test", file_name="test.zip"
    )
    if not settled:
        return record
    async with asyncio.timeout(timeout_s):
        async for _, current in store.watch(bus.orchestrations, OrchestrationRecord, record.key):
            if current is not None and current.status in ORCHESTRATION_SETTLED:
                return current
    raise AssertionError("unreachable")


async def run_once(bus: Bus, orch: OrchestrationRecord, **options: Any) -> TaskRecord:
    return await catalog.create_task(
        bus, orch, name=options.pop("name", "t"), kind=TaskKind.RUN_ONCE, **options
    )


async def wait_run(
    bus: Bus,
    task_id: str,
    until: Callable[[RunRecord], bool] = lambda run: run.status in RUN_TERMINAL,
    timeout_s: float = 30.0,
) -> RunRecord:
    """The task's (single) run once ``until`` holds for it."""
    last: RunRecord | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async for _, run in store.watch(bus.runs, RunRecord, f"*.{task_id}.*"):
                if run is not None:
                    last = run
                    if until(run):
                        return run
    except TimeoutError:
        raise AssertionError(f"run of {task_id} never got there; last seen {last}") from None
    raise AssertionError("unreachable")


async def wait_runs(
    bus: Bus, task_ids: Iterable[str], timeout_s: float = 60.0
) -> dict[str, RunRecord]:
    """Every given task's run, once all are terminal."""
    wanted = set(task_ids)
    done: dict[str, RunRecord] = {}
    async with asyncio.timeout(timeout_s):
        async for _, run in store.watch(bus.runs, RunRecord):
            if run is not None and run.task_id in wanted and run.status in RUN_TERMINAL:
                done[run.task_id] = run
                if len(done) == len(wanted):
                    return done
    raise AssertionError("unreachable")


async def wait_line(bus: Bus, run: RunRecord, text: str, timeout_s: float = 20.0) -> LogLine:
    async with asyncio.timeout(timeout_s):
        async for line in logs.follow(bus, run):
            if text in line.text:
                return line
    raise AssertionError(f"{text!r} never appeared in the log")


async def log_lines(bus: Bus, run: RunRecord) -> list[LogLine]:
    return await logs.read(bus, run)


async def last_batch(bus: Bus, run: RunRecord) -> LogBatch:
    msg = await bus.js.get_last_msg(
        names.LOGS_STREAM,
        names.logs_subject(names.workspace_token(run.workspace), run.task_id, run.run_id),
        direct=True,
    )
    assert msg.data is not None
    return decode(LogBatch, msg.data)


def texts(lines: list[LogLine], stream: str) -> list[str]:
    return [line.text for line in lines if line.stream == stream]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its reaper is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Poll the process table (nothing to subscribe to) until ``pid`` is gone."""
    async with asyncio.timeout(timeout_s):
        while not process_gone(pid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def start_executor(start_daemon: Callable[..., Daemon], url: str, work: Path, *args: str) -> Daemon:
    return start_daemon("executor", "--url", url, "--work-dir", str(work), *args)


# --- the tests -------------------------------------------------------------------------------
MAIN_OK = """
import json, os, sys
import sdk  # the SDK is importable inside every task
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
print("args", json.dumps(args, sort_keys=True))
for i in range(5):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
print("ids", os.environ["TASKBUS_TASK_ID"], os.environ["TASKBUS_RUN_ID"],
      os.environ["TASKBUS_ORCH_ID"], os.environ["TASKBUS_ORCH_SHA"])
print("env", os.environ["TASKBUS_URL"], os.environ["PYTHONUNBUFFERED"])
print("cwd", os.getcwd() == os.path.dirname(os.path.abspath(__file__)), open("data.txt").read())
print("sdk", os.path.dirname(sdk.__file__))
"""


async def test_success_with_args_and_separate_streams(
    bus: Bus, nats_url: str, executor: Daemon
) -> None:
    orch = await upload(bus, {"main.py": MAIN_OK, "data.txt": "shipped"}, settled=False)
    task = await run_once(bus, orch, json_args={"pipeline": "p", "n": 3})
    run = await wait_run(bus, task.id)

    assert run.status == RunStatus.SUCCESS, run
    assert run.exit_code == 0 and run.attempt == 1 and run.pid > 0
    assert run.executor and run.started_at and run.finished_at
    assert run.started_at <= run.finished_at
    lines = await log_lines(bus, run)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    stdout, stderr = texts(lines, "stdout"), texts(lines, "stderr")
    assert stdout[0] == 'args {"n": 3, "pipeline": "p"}'
    assert stdout[1:6] == [f"out {i}" for i in range(5)]
    assert stderr == [f"err {i}" for i in range(5)]
    assert stdout[6] == f"ids {task.id} {run.run_id} {orch.id} {orch.sha}"
    assert stdout[7] == f"env {nats_url} 1"
    assert stdout[8] == "cwd True shipped"
    assert stdout[9] == f"sdk {REPO / 'sdk'}"
    taskbus = texts(lines, "taskbus")
    assert taskbus[0].startswith("taskbus: started attempt 1")
    assert taskbus[-1].startswith("taskbus: success (exit code 0) in ")
    assert (await last_batch(bus, run)).eof


async def test_failure_keeps_the_traceback(bus: Bus, executor: Daemon) -> None:
    main = "print('loading')\ndef load():\n    raise FileNotFoundError('model.onnx')\nload()\n"
    orch = await upload(bus, {"main.py": main})
    task = await run_once(bus, orch)
    run = await wait_run(bus, task.id)

    assert run.status == RunStatus.FAILURE
    assert run.exit_code == 1 and run.reason == "exit code 1"
    lines = await log_lines(bus, run)
    stderr = "\n".join(texts(lines, "stderr"))
    assert texts(lines, "stdout") == ["loading"]
    assert stderr.startswith("Traceback (most recent call last):")
    assert 'main.py", line 4, in <module>' in stderr
    assert stderr.endswith("FileNotFoundError: model.onnx")
    assert "zygote" not in stderr and "runpy" not in stderr  # only the user's own frames
    assert texts(lines, "taskbus")[-1].startswith("taskbus: failure (exit code 1)")
    assert await catalog.status_of(bus, task) == "failed"


GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print("grandchild", child.pid, flush=True)
time.sleep(120)
"""


async def test_timeout_ends_the_whole_process_group(bus: Bus, executor: Daemon) -> None:
    orch = await upload(bus, {"main.py": GRANDCHILD})
    task = await run_once(bus, orch, timeout=1)
    running = await wait_run(bus, task.id, lambda run: run.pid > 0)
    grandchild = int((await wait_line(bus, running, "grandchild")).text.split()[1])
    run = await wait_run(bus, task.id)

    assert run.status == RunStatus.TIMED_OUT
    assert run.reason == "timeout 1s"
    assert run.exit_code == -signal.SIGTERM
    await wait_gone(grandchild)  # it ignored SIGTERM: SIGKILL to the group took it
    await wait_gone(run.pid)
    lines = await log_lines(bus, run)
    assert texts(lines, "taskbus")[-1].startswith("taskbus: timed_out (exit code -15)")
    assert (await last_batch(bus, run)).eof


SLEEPER = "import time\nprint('working', flush=True)\ntime.sleep(120)\n"


async def test_kill_of_a_running_task_and_of_one_run(bus: Bus, executor: Daemon) -> None:
    orch = await upload(bus, {"main.py": SLEEPER})
    by_flag = await run_once(bus, orch, name="by-flag")
    by_control = await run_once(bus, orch, name="by-control")
    first = await wait_run(bus, by_flag.id, lambda run: run.pid > 0)
    second = await wait_run(bus, by_control.id, lambda run: run.pid > 0)
    await wait_line(bus, first, "working")
    await wait_line(bus, second, "working")

    assert await catalog.status_of(bus, by_flag) == "started"
    await catalog.set_task_flags(bus, by_flag.id, killed=True)
    await dispatch.request_run_kill(bus, by_control, second.run_id, "replaced by a newer run")
    killed = await wait_run(bus, by_flag.id)
    replaced = await wait_run(bus, by_control.id)

    assert (killed.status, killed.reason) == (RunStatus.KILLED, "task killed")
    assert (replaced.status, replaced.reason) == (RunStatus.KILLED, "replaced by a newer run")
    await wait_gone(killed.pid)
    await wait_gone(replaced.pid)
    assert await catalog.status_of(bus, await catalog.get_task(bus, by_flag.id)) == "killed"


async def test_a_task_killed_before_it_starts_never_runs(bus: Bus, executor: Daemon) -> None:
    orch = await upload(bus, {"main.py": "print('should not run')\n"})
    task = await catalog.create_task(bus, orch, name="s", kind=TaskKind.SCHEDULED,
                                     schedule="0 0 1 1 *")  # fmt: skip
    await catalog.set_task_flags(bus, task.id, killed=True)
    await dispatch.enqueue_run(bus, await catalog.get_task(bus, task.id))
    run = await wait_run(bus, task.id)

    assert run.status == RunStatus.KILLED and run.pid == 0
    assert run.reason == "task killed before the run started"
    assert texts(await log_lines(bus, run), "stdout") == []


async def test_long_lines_are_split_and_the_log_cap_says_so(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_executor(start_daemon, nats_url, tmp_path / "ex", "--max-log-bytes", "60000")
    main = (
        "import sys\nprint('x' * 40000)\n"
        "for i in range(100):\n    print(str(i) * 1000)\nprint('err', file=sys.stderr)\n"
    )
    orch = await upload(bus, {"main.py": main})
    task = await run_once(bus, orch)
    run = await wait_run(bus, task.id)

    assert run.status == RunStatus.SUCCESS
    lines = await log_lines(bus, run)
    stdout = texts(lines, "stdout")
    limit = names.LOG_LINE_MAX_CHARS
    assert [len(piece) for piece in stdout[:3]] == [limit, limit, 40000 - 2 * limit]
    assert len(stdout) < 3 + 100  # trimmed past the cap ...
    taskbus = "\n".join(texts(lines, "taskbus"))
    assert "log cap of 60000 bytes" in taskbus  # ... and the log says so
    assert "bytes of output were dropped past the log cap" in taskbus
    assert daemon.process.poll() is None


async def test_many_quick_runs_all_succeed(bus: Bus, executor: Daemon) -> None:
    orch = await upload(bus, {"main.py": "import sys\nprint(sys.argv[0])\n"})
    tasks = await asyncio.gather(*(run_once(bus, orch, name=f"q{i}") for i in range(50)))
    runs = await wait_runs(bus, [task.id for task in tasks])

    failed = [run for run in runs.values() if run.status != RunStatus.SUCCESS]
    assert not failed, [(run.reason, run.exit_code) for run in failed]
    assert len({run.pid for run in runs.values()}) == 50


async def test_graceful_shutdown_lets_runs_finish_then_kills_them(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_executor(start_daemon, nats_url, tmp_path / "ex", "--shutdown-grace", "1")
    orch = await upload(bus, {"main.py": SLEEPER})
    task = await run_once(bus, orch)
    running = await wait_run(bus, task.id, lambda run: run.pid > 0)
    await wait_line(bus, running, "working")

    assert daemon.stop(signal.SIGTERM) == 0
    run = await wait_run(bus, task.id)
    assert run.status == RunStatus.KILLED
    assert run.reason == "the executor shut down (SIGTERM)"
    await wait_gone(run.pid)
    output = daemon.output()
    assert "stopped after" in output and "1 runs (1 killed)" in output
    assert await store.get(bus.executors, running.executor, ExecutorRecord) is None


async def test_orchestration_without_requirements_is_ready_with_no_lock(
    bus: Bus, executor: Daemon
) -> None:
    orch = await upload(bus, {"app/main.py": "print('nested')\n"})
    assert orch.status == OrchestrationStatus.READY
    assert (orch.lock, orch.python, orch.error) == ("", "", "")
    run = await wait_run(bus, (await run_once(bus, orch)).id)
    assert run.status == RunStatus.SUCCESS
    assert texts(await log_lines(bus, run), "stdout") == ["nested"]
