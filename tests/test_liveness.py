"""Executors that die or freeze: a dead one's run is recorded lost within the ack wait and one
heartbeat, naming it; a frozen one's user processes are gone before another attempt starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker import catalog, names
from broker.connection import Bus
from broker.status import RUN_TERMINAL, RunStatus, TaskKind
from tests.helpers import Daemon, wait_for_executors
from tests.test_executor import log_lines, run_once, start_executor, texts, upload, wait_run

SLOW = os.environ.get("TASKBUS_SLOW_LIVENESS") == "1"  # 10 s and 30 s ack waits too (my note)


async def wait_file(path: Path, timeout_s: float = 15.0) -> None:
    """Poll for a file a task writes (nothing to subscribe to)."""
    async with asyncio.timeout(timeout_s):
        while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 (a stat, microseconds)
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def thawed(daemon: Daemon) -> Iterator[None]:
    """SIGCONT the (stopped) daemon at the end, whatever the outcome."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.process.pid, signal.SIGCONT)


@pytest.mark.parametrize(
    "ack_wait",
    [
        5,
        pytest.param(10, marks=pytest.mark.skipif(not SLOW, reason="TASKBUS_SLOW_LIVENESS=1")),
        pytest.param(30, marks=pytest.mark.skipif(not SLOW, reason="TASKBUS_SLOW_LIVENESS=1")),
    ],
)
async def test_a_killed_executor_is_recorded_lost_within_the_ack_wait_and_a_heartbeat(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon], ack_wait: int
) -> None:
    wait = ("--ack-wait", str(ack_wait))
    first = start_executor(start_daemon, nats_url, tmp_path / "a", *wait)
    [first_id] = await wait_for_executors(bus, 1)
    orch = await upload(bus, {"main.py": "import time\nprint('up', flush=True)\ntime.sleep(600)\n"})
    task = await run_once(bus, orch)
    await wait_run(bus, task.id, lambda run: run.pid > 0)
    start_executor(start_daemon, nats_url, tmp_path / "b", *wait)  # takes over what is lost
    await wait_for_executors(bus, 2)

    killed_at = datetime.now(UTC)
    first.kill()
    lost = await wait_run(bus, task.id, timeout_s=ack_wait + 15)

    assert lost.finished_at is not None
    took = (lost.finished_at - killed_at).total_seconds()
    beat = min(names.HEARTBEAT_INTERVAL_S, ack_wait / 6)  # the executor's heartbeat interval
    print(f"\nack wait {ack_wait} s: SIGKILL to 'executor lost' in {took:.2f} s "
          f"(bound {ack_wait + beat:.2f} s)")  # fmt: skip
    assert (lost.status, lost.reason) == (RunStatus.FAILURE, f"executor lost ({first_id})")
    assert took <= ack_wait + beat + 0.3  # processing: the redelivery, the claim, the write


# Attempt 1 starts a detached (setsid) grandchild; both write a monotonic tick every 10 ms
# (time.monotonic is one clock for every process of the host). Attempt 2 records when it
# started and which of attempt 1's processes it can still see.
FROZEN_MAIN = """
import json, os, subprocess, sys, time
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
folder = args["dir"]
def path(name):
    return os.path.join(folder, name)
def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
if os.path.exists(path("first.pids")):
    started = time.monotonic()
    pids = json.load(open(path("first.pids")))
    seen = {pid: state(pid) for pid in pids}
    with open(path("second.json"), "w") as f:
        json.dump({"started": started, "seen": seen}, f)
    print("second attempt")
    sys.exit(0)
TICK = '''
import os, sys, time
target = sys.argv[1]
while True:
    with open(target + ".tmp", "w") as f:
        f.write(repr(time.monotonic()))
    os.replace(target + ".tmp", target)
    time.sleep(0.01)
'''
grandchild = subprocess.Popen([sys.executable, "-c", TICK, path("grandchild.tick")],
                              start_new_session=True)
with open(path("first.pids"), "w") as f:
    json.dump([os.getpid(), grandchild.pid], f)
print("first attempt", flush=True)
exec(TICK.replace("sys.argv[1]", repr(path("first.tick"))))
"""


async def test_a_frozen_executors_processes_are_gone_before_the_retry_starts(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    wait = ("--ack-wait", "2")
    frozen = start_executor(start_daemon, nats_url, tmp_path / "a", *wait)
    [frozen_id] = await wait_for_executors(bus, 1)
    folder = tmp_path / "marks"
    folder.mkdir()
    orch = await upload(bus, {"main.py": FROZEN_MAIN})
    task = await catalog.create_task(
        bus, orch, name="retried", kind=TaskKind.RUN_ONCE, json_args={"dir": str(folder)},
        retries=1,
    )  # fmt: skip
    await wait_run(bus, task.id, lambda run: run.pid > 0)
    pids: list[int] = []
    with thawed(frozen):
        await wait_file(folder / "grandchild.tick")
        pids = json.loads((folder / "first.pids").read_text())
        start_executor(start_daemon, nats_url, tmp_path / "b", *wait)
        await wait_for_executors(bus, 2)

        frozen_at = time.monotonic()
        os.kill(frozen.process.pid, signal.SIGSTOP)  # the executor only: not its zygote
        again = await wait_run(
            bus, task.id, lambda run: run.attempt == 2 and run.status in RUN_TERMINAL
        )
        second = json.loads((folder / "second.json").read_text())
        last_ticks = {
            name: float((folder / f"{name}.tick").read_text()) for name in ("first", "grandchild")
        }
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    assert (again.status, again.attempt) == (RunStatus.SUCCESS, 2)
    assert again.executor not in ("", frozen_id)
    started = second["started"]
    print(f"\nfrozen at 0; attempt 1 last ticked at {max(last_ticks.values()) - frozen_at:.2f} s, "
          f"attempt 2 started at {started - frozen_at:.2f} s")  # fmt: skip
    # Every process of attempt 1 was dead (reaped, not even a zombie) when attempt 2 began...
    assert set(second["seen"].values()) == {"gone"}, second
    # ... and none of them ticked after it did.
    assert max(last_ticks.values()) < started
    said = "\n".join(texts(await log_lines(bus, again), "taskbus"))
    assert f"attempt 1 was lost with executor {frozen_id}" in said
