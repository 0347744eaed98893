"""The SDK end to end with a real executor: run once, wait, logs (read, limit, follow live),
kill of a running run, a failing main.py, in-task helpers — sync and async."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

import pytest

import sdk
from tests.helpers import Daemon, make_zip

# The task prints, then blocks on a FIFO the test opens only after the follower has seen
# "ready": the lines after it can only reach the follower live.
LIVE = make_zip(
    {
        "main.py": (
            "import sys\n"
            "import sdk\n"
            "args = sdk.task_args()\n"
            "print('in_task', sdk.in_task(), sdk.Client().in_task())\n"
            "print('args', args['workspace_name'], args['n'])\n"
            "print('ready')\n"
            "with open(args['gate']) as gate:\n"
            "    print('gate says', gate.read())\n"
            "print('to stderr', file=sys.stderr)\n"
            "for i in range(3):\n"
            "    print(f'line {i}')\n"
            "print('done')\n"
        )
    }
)
SLEEPY = make_zip({"main.py": "import time\nprint('started', flush=True)\ntime.sleep(120)\n"})
FAILING = make_zip({"main.py": "print('about to fail')\nraise ValueError('boom')\n"})


def _message(line: str) -> str:
    stamp, _, message = line.partition(" ")
    assert datetime.fromisoformat(stamp).tzinfo is not None, line
    return message


def _open_gate(fifo: Path) -> None:
    with fifo.open("w") as gate:
        gate.write("go")


def test_run_once_end_to_end(nats_url: str, executor: Daemon, tmp_path: Path) -> None:
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    with sdk.Client(nats_url) as wl:
        orch = wl.upload_orchestration(bytes_buffer=LIVE, name="live")
        assert orch.wait_until_ready(timeout=60) is orch
        assert orch.status() == "ready"
        task = orch.run_once(
            "live", {"workspace_name": "ws", "n": 7, "gate": str(fifo)}, timeout=60
        )
        run = task.last_runs()[0]

        followed: list[str] = []
        opener: threading.Thread | None = None
        for line in run.logs(follow=True):
            followed.append(line)
            if _message(line) == "ready":
                assert run.refresh().status() == "running"  # the run is still going
                assert "line 0" not in "\n".join(run.logs())
                opener = threading.Thread(target=_open_gate, args=(fifo,))
                opener.start()
        assert opener is not None
        opener.join()

        assert task.wait(timeout=60) == "success"
        assert task.status() == sdk.TaskStatus.SUCCESS
        assert task.active() is False
        assert run.wait(timeout=5) == "success"
        assert run.exit_code() == 0 and run.attempt() == 1 and run.executor()
        started, finished = run.started_at(), run.finished_at()
        assert started is not None and finished is not None and finished >= started

        lines = run.logs()
        assert isinstance(lines, sdk.TaskRunLogs)
        messages = [_message(line) for line in lines]
        # stdout in exact order; stderr is another pipe, so only its presence is certain
        assert "to stderr" in messages
        user = [m for m in messages if not m.startswith("taskbus:") and m != "to stderr"]
        assert user == [
            "in_task True True",
            "args ws 7",
            "ready",
            "gate says go",
            "line 0",
            "line 1",
            "line 2",
            "done",
        ]
        assert followed == list(lines)  # the follower saw every line, in order
        assert run.logs(limit=2) == lines[-2:]
        assert run.logs(limit=0) == []
        assert list(run.logs(limit=3, follow=True)) == lines[-3:]  # ended run: history only
        assert "done" in repr(lines) and "done" in lines._repr_html_()
        listed = wl.list_tasks()[0]
        assert listed.id() == task.id() and listed.active() is False
        assert "success" in repr(wl.list_tasks())


def test_kill_a_running_run_once_task(nats_url: str, executor: Daemon) -> None:
    with sdk.Client(nats_url) as wl:
        orch = wl.upload_orchestration(bytes_buffer=SLEEPY, name="sleepy").wait_until_ready(60)
        task = orch.run_once("sleepy", timeout=120)
        run = task.last_runs()[0]
        for line in run.logs(follow=True):
            if _message(line) == "started":
                break
        assert task.kill() == sdk.TaskStatus.PENDING_KILL
        assert task.status() in ("pending_kill", "killed")
        assert task.wait(timeout=30) == "killed"
        assert run.wait(timeout=5) == "killed"
        assert task.status() == "killed" and task.active() is False
        assert [t.id() for t in wl.list_tasks(killed=True)] == [task.id()]


def test_failing_main_is_a_failed_task_with_traceback(nats_url: str, executor: Daemon) -> None:
    with sdk.Client(nats_url) as wl:
        orch = wl.upload_orchestration(bytes_buffer=FAILING).wait_until_ready(60)
        task = orch.run_once("failing")
        assert task.wait(timeout=60) == "failed"
        run = task.last_runs(status="failure")[0]
        assert run.status() == "failure" and run.exit_code() not in (None, 0)
        text = "\n".join(run.logs())
        assert "about to fail" in text and "Traceback" in text and "ValueError: boom" in text


async def test_async_client_end_to_end(nats_url: str, executor: Daemon) -> None:
    async with sdk.AsyncClient(nats_url) as wl:
        orch = await wl.upload_orchestration(
            bytes_buffer=make_zip({"main.py": "import sdk\nprint('got', sdk.task_args())\n"})
        )
        await orch.wait_until_ready(timeout=60)
        task = await orch.run_once("async", {"k": "v"})
        (run,) = await task.last_runs()
        followed = [line async for line in run.logs(follow=True)]
        assert await run.wait(timeout=30) == "success"
        assert await task.wait(timeout=30) == "success"
        assert await task.status() == "success"
        assert followed == list(await run.logs())
        assert any(_message(line) == "got {'k': 'v'}" for line in followed)


def test_packaging_ready_or_error_with_the_resolver_message(
    nats_url: str, executor: Daemon
) -> None:
    with sdk.Client(nats_url) as wl:
        orch = wl.upload_orchestration(bytes_buffer=make_zip({"main.py": "print(1)"}))
        assert orch.status() in ("pending_packaging", "packaging", "ready")
        orch.wait_until_ready(timeout=60)
        assert orch.status() == "ready" and orch.error() == ""
        assert wl.list_orchestrations()[0].status() == "ready"

        broken = wl.upload_orchestration(
            bytes_buffer=make_zip(
                {"main.py": "print(1)", "requirements.txt": "taskbus-no-such-package-xyz==1.0\n"}
            ),
            name="broken",
        )
        with pytest.raises(sdk.OrchestrationNotReady, match="taskbus-no-such-package-xyz"):
            broken.wait_until_ready(timeout=60)
        assert broken.status() == "error" and "could not be resolved" in broken.error()
        with pytest.raises(sdk.OrchestrationNotReady, match="failed packaging"):
            broken.run_once("never")
        assert wl.list_tasks() == []


@pytest.fixture(autouse=True)
def _no_task_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKBUS_TASK_ID", raising=False)
