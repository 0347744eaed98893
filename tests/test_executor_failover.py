"""Executors that die, compete or lose the bus: a run is never run twice at once, a lost
attempt is recorded (and retried when the task allows), a cut-off executor fences itself."""

from __future__ import annotations

import asyncio
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
    """Kill user processes left behind if a test fails, whatever the outcome."""
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

        first.kill()  # the executor dies (SIGKILL): its user processes go with it
        for pid in pids:
            await wait_gone(pid, timeout_s=5.0)  # before any replacement could start
        start_executor(start_daemon, nats_url, tmp_path / "b", "--ack-wait", "1")
        lost = await wait_run(bus, once.id)
        again = await wait_run(bus, retried.id)

    assert (lost.status, lost.reason, lost.attempt) == (
        RunStatus.FAILURE,
        f"executor lost ({first_id})",
        1,
    )
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
    assert run.reason.startswith("fenced: no contact with NATS for over 0.5 s")


class FreezingProxy:
    """A TCP proxy in front of the server that can stop forwarding while keeping every
    connection open: a silent network drop, which the client's is_connected does not see."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)  # before any await: close() must see every connection
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            self._writers.append(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except OSError:
            writer.close()
        finally:
            self._serving.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        """Stop accepting, end every connection and wait until their sockets are closed (a
        transport left to the garbage collector after the loop ends is a ResourceWarning)."""
        self.thaw()
        if self._server is not None:
            self._server.close()
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


async def test_a_silently_dropped_connection_fences_within_half_the_ack_wait(
    bus: Bus, nats_server: EmbeddedServer, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    proxy = FreezingProxy(nats_server.port)
    url = await proxy.start()
    try:
        start_executor(start_daemon, url, tmp_path / "ex", "--ack-wait", "2")
        await wait_for_executors(bus, 1)
        orch = await upload(bus, {"main.py": "import time\nprint('up', flush=True)\n"
                                              "time.sleep(120)\n"})  # fmt: skip
        task = await run_once(bus, orch)
        running = await wait_run(bus, task.id, lambda run: run.pid > 0)
        await wait_line(bus, running, "up")

        proxy.freeze()  # no error, no EOF: the executor's client still thinks it is connected
        with reaping([running.pid]):
            # Fenced at half the ack wait after the last confirmed heartbeat (≤ 1/6 of it
            # before the freeze), well before the queue could redeliver (an ack wait after
            # the last in_progress).
            await wait_gone(running.pid, timeout_s=3.0)
        proxy.thaw()
        run = await wait_run(bus, task.id)
    finally:
        await proxy.close()

    assert run.status == RunStatus.KILLED
    assert run.reason.startswith("fenced: no contact with NATS for over 1 s")
