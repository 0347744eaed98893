"""The SDK against a real nats-server, without an executor: uploads, task records, bad input,
errors, reprs, and the in-task helpers' import cost."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

import sdk
from broker import store
from broker.connection import Bus
from broker.models import OrchestrationRecord, TaskRecord
from broker.server import free_port
from broker.status import OrchestrationStatus, TaskKind
from tests.helpers import REPO, daemon_env, make_zip

T = TypeVar("T")
HELLO = make_zip({"main.py": "print('hello')\n"})
ORCH_COLUMNS = "id  name  status  filename  sha  created at  updated at  workspace"
TASK_COLUMNS = (
    "id  name  last run status  type  active  schedule  created at  updated at  workspace"
)


def on_bus(client: sdk.Client, use: Callable[[Bus], Awaitable[T]]) -> T:
    """Run ``use(bus)`` on the client's own loop and connection."""

    async def call() -> T:
        return await use(await client.aio.session.bus())

    return client._portal.call(call)


@pytest.fixture
def client(nats_url: str) -> Iterator[sdk.Client]:
    with sdk.Client(nats_url) as wl:
        yield wl


def _header(table: str) -> str:
    return " ".join(table.splitlines()[0].split())


def test_import_and_in_task_helpers_load_no_bus_libraries(tmp_path: Path) -> None:
    """A task child calling sdk.in_task()/task_args() must not pay for nats/msgspec/anyio."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"n": 3, "s": "x"}))
    code = (
        "import sys, sdk\n"
        "assert sdk.in_task() is True\n"
        "assert sdk.task_args() == {'n': 3, 's': 'x'}\n"
        "heavy = sorted(m for m in ('nats', 'msgspec', 'anyio', 'asyncio') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    env = daemon_env() | {"TASKBUS_TASK_ID": "t", "TASKBUS_ARGS_FILE": str(args_file)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # and the lazy names still resolve
    assert sdk.TaskbusError in sdk.NotConnected.__mro__  # the same class object, not a copy
    assert issubclass(sdk.OrchestrationMissingFile, ValueError)
    assert sdk.TaskStatus.PENDING_KILL == "pending_kill"


def test_in_task_helpers_outside_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKBUS_TASK_ID", raising=False)
    monkeypatch.delenv("TASKBUS_ARGS_FILE", raising=False)
    assert sdk.in_task() is False
    assert sdk.task_args() == {}
    wl = sdk.Client("nats://127.0.0.1:1")  # in_task needs no connection
    assert wl.in_task() is False and wl.task_args() == {}
    wl.close()


def test_upload_by_path_and_by_buffer_with_getters(client: sdk.Client, tmp_path: Path) -> None:
    path = tmp_path / "hello.zip"
    path.write_bytes(HELLO)
    before = datetime.now(UTC)
    first = client.upload_orchestration(path=path)
    second = client.upload_orchestration(bytes_buffer=HELLO, name="buffered")
    third = client.upload_orchestration(bytes_buffer=HELLO, file_name="given.zip")

    assert first.file_name() == "hello.zip" and first.name() == "hello"
    assert second.file_name() == "-" and second.name() == "buffered"
    assert third.file_name() == "given.zip"
    assert first.sha() == hashlib.sha256(HELLO).hexdigest() == second.sha()
    assert first.status() == "pending_packaging"  # returns at once, packaging is queued
    assert first.error() == ""
    assert first.workspace() == ""
    assert first.created_at() >= before - timedelta(seconds=1)
    assert first.created_at().tzinfo is not None and first.updated_at() >= first.created_at()
    assert first.list_tasks() == []

    listed = client.list_orchestrations()
    assert [o.id() for o in listed] == [first.id(), second.id(), third.id()]  # oldest first
    assert client.get_orchestration(first.id()).name() == "hello"
    assert client.get_orchestration("buffered").id() == second.id()
    with pytest.raises(sdk.OrchestrationNotFound, match="list_orchestrations"):
        client.get_orchestration("nope")
    second.delete()
    assert [o.id() for o in client.list_orchestrations()] == [first.id(), third.id()]


def test_workspaces_scope_listings(nats_url: str) -> None:
    with sdk.Client(nats_url, workspace="ws-a") as a, sdk.Client(nats_url) as anywhere:
        orch = a.upload_orchestration(bytes_buffer=HELLO, name="a")
        assert orch.workspace() == "ws-a"
        anywhere.upload_orchestration(bytes_buffer=HELLO, name="b")
        assert [o.name() for o in anywhere.list_orchestrations(workspace="ws-a")] == ["a"]
        assert len(anywhere.list_orchestrations()) == 2
        task = orch.run_scheduled("s", "0 * * * *")
        assert task.workspace() == "ws-a"
        assert [t.id() for t in anywhere.list_tasks(workspace="ws-a")] == [task.id()]
        assert anywhere.list_tasks(workspace="other") == []


def _symlink_zip() -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "print(1)")
        link = zipfile.ZipInfo("data")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def _oversized_zip() -> bytes:
    """A tiny zip whose central directory declares ~4 GiB uncompressed (a zip bomb's shape)."""
    data = bytearray(make_zip({"main.py": "print(1)", "big.bin": "x"}))
    at = data.rfind(b"PK\x01\x02")  # the last central directory entry: big.bin
    struct.pack_into("<I", data, at + 24, 0xFFFF_FFF0)
    return bytes(data)


BAD_ZIPS = {
    "not a zip": (b"this is not a zip", "Not a zip"),
    "empty zip": (make_zip({}), "empty"),
    "no main.py": (make_zip({"run.py": "x"}), "no main.py"),
    "two requirements": (
        make_zip({"main.py": "x", "requirements.txt": "a", "lib/requirements.txt": "b"}),
        "several requirements.txt",
    ),
    "absolute path": (make_zip({"main.py": "x", "/etc/cron.d/x": "x"}), "absolute path"),
    "dot-dot path": (make_zip({"main.py": "x", "../../evil.py": "x"}), r"'\.\.'"),
    "symlink": (_symlink_zip(), "symbolic link"),
    "oversized": (_oversized_zip(), "too large"),
}


def test_bad_uploads_are_clear_and_store_nothing(client: sdk.Client, tmp_path: Path) -> None:
    for label, (data, problem) in BAD_ZIPS.items():
        with pytest.raises(sdk.InvalidOrchestration, match=problem):
            client.upload_orchestration(bytes_buffer=data)
        path = tmp_path / f"{label}.zip"
        path.write_bytes(data)
        with pytest.raises(sdk.InvalidOrchestration, match=problem):
            client.upload_orchestration(path=path)

    with pytest.raises(sdk.OrchestrationMissingFile, match="not both") as both:
        client.upload_orchestration(bytes_buffer=HELLO, path=tmp_path / "x.zip")
    assert isinstance(both.value, ValueError)
    with pytest.raises(sdk.OrchestrationMissingFile, match=r"path=.*bytes_buffer="):
        client.upload_orchestration()
    missing = tmp_path / "nowhere" / "task.zip"
    with pytest.raises(sdk.OrchestrationMissingFile, match=re.escape(str(missing))):
        client.upload_orchestration(path=missing)
    with pytest.raises(sdk.OrchestrationMissingFile, match="is a directory"):
        client.upload_orchestration(path=tmp_path)
    with pytest.raises(TypeError, match="bytes_buffer must be bytes"):
        client.upload_orchestration(bytes_buffer="main.py")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        client.upload_orchestration(bytes_buffer=HELLO, name="")
    assert client.list_orchestrations() == []


def test_bad_task_inputs_are_clear_and_store_nothing(client: sdk.Client) -> None:
    orch = client.upload_orchestration(bytes_buffer=HELLO, name="hello")
    bad_calls = [
        (TypeError, "must be a dict.*list", lambda: orch.run_once("t", [1, 2])),  # type: ignore[arg-type]
        (TypeError, "must be a dict.*str", lambda: orch.run_once("t", "{}")),  # type: ignore[arg-type]
        (TypeError, "only JSON values", lambda: orch.run_once("t", {"x": object()})),
        (TypeError, "only JSON values", lambda: orch.run_once("t", {"x": float("nan")})),
        (ValueError, "positive whole number", lambda: orch.run_once("t", timeout=0)),
        (ValueError, "positive whole number", lambda: orch.run_once("t", timeout=-5)),
        (ValueError, "positive whole number", lambda: orch.run_once("t", timeout=1.5)),  # type: ignore[arg-type]
        (ValueError, "positive whole number", lambda: orch.run_once("t", timeout="9")),  # type: ignore[arg-type]
        (ValueError, "non-empty string", lambda: orch.run_once("")),
        (sdk.InvalidSchedule, "6 fields|fields", lambda: orch.run_scheduled("s", "* * *")),
        (sdk.InvalidSchedule, "Invalid cron", lambda: orch.run_scheduled("s", "61 * * * *")),
        (sdk.InvalidSchedule, "empty", lambda: orch.run_scheduled("s", "")),
        (
            sdk.InvalidSchedule,
            "time zone",
            lambda: orch.run_scheduled("s", "* * * * *", tz="Mars/X"),
        ),
        (sdk.InvalidSchedule, "overlap", lambda: orch.run_scheduled("s", "* * * * *", overlap="x")),
        (sdk.InvalidSchedule, "missed", lambda: orch.run_scheduled("s", "* * * * *", missed="x")),
        (TypeError, "must be a dict", lambda: orch.run_continuously("c", 3)),  # type: ignore[arg-type]
    ]
    for error, message, call in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert client.list_tasks() == []

    # an orchestration whose packaging failed cannot run
    def failed(record: OrchestrationRecord) -> OrchestrationRecord:
        return msgspec.structs.replace(
            record, status=OrchestrationStatus.ERROR, error="No matching distribution for nope"
        )

    # the record changes as an executor's packager would write it
    on_bus(
        client,
        lambda bus: store.update(
            bus.orchestrations, f"default.{orch.id()}", OrchestrationRecord, failed
        ),
    )
    with pytest.raises(sdk.OrchestrationNotReady, match="No matching distribution"):
        orch.run_once("t")
    with pytest.raises(sdk.OrchestrationNotReady, match="No matching distribution"):
        orch.wait_until_ready(timeout=5)
    assert orch.status() == "error" and "nope" in orch.error()
    assert client.list_tasks() == []


def test_task_ids(client: sdk.Client) -> None:
    for bad in ("nope", "", "123", "7b5f0e8a-3c1d-4f2e-9a6b"):
        with pytest.raises(ValueError, match="not a valid task id"):
            client.get_task_by_id(bad)
    with pytest.raises(sdk.TaskNotFound, match="list_tasks"):
        client.get_task_by_id("7b5f0e8a-3c1d-4f2e-9a6b-1c2d3e4f5a6b")


def test_no_server_is_not_connected_naming_url_and_command() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with sdk.Client(url) as wl:
        for call in (wl.list_tasks, wl.list_orchestrations, lambda: wl.upload_orchestration(HELLO)):
            with pytest.raises(sdk.NotConnected) as caught:
                call()
            assert url in str(caught.value) and "taskbus up" in str(caught.value)
    # bad input is reported before any connection is tried
    with sdk.Client(url) as wl, pytest.raises(sdk.OrchestrationMissingFile):
        wl.upload_orchestration()


async def test_async_client_not_connected() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(sdk.NotConnected, match="taskbus up"):
        async with sdk.AsyncClient(url):
            pass


def test_run_once_task_record_and_getters(client: sdk.Client) -> None:
    orch = client.upload_orchestration(bytes_buffer=HELLO, name="hello")
    task = orch.run_once("once", {"workspace_name": "ws", "n": [1, 2]}, timeout=60, debug=True)
    assert task.name() == "once"
    assert task.task_type() == "Temporary Run"
    assert task.status() == "pending"  # no executor: its run waits in the queue
    assert task.active() is True
    assert task.schedule() is None and task.next_run_at() is None
    assert task.input_data() == {"workspace_name": "ws", "n": [1, 2]}
    assert task.orchestration() == orch.id()
    assert task.created_at().tzinfo is not None and task.updated_at() >= task.created_at()
    record = on_bus(client, lambda bus: store.get(bus.tasks, f"default.{task.id()}", TaskRecord))
    assert record is not None
    assert record[0].timeout_s == 60 and record[0].debug is True
    assert record[0].kind is TaskKind.RUN_ONCE

    runs = task.last_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run.task_id() == task.id() and run.status() == "pending"
    assert run.attempt() == 1 and run.exit_code() is None and run.executor() == ""
    assert run.started_at() is None and run.finished_at() is None
    assert run.reason() == "waiting: no executor serves pool 'default'"  # none is running
    assert run.created_at().tzinfo is not None
    assert run.logs() == [] and repr(run.logs()) == "(no logs yet)"
    assert "(no logs yet)" in run.logs()._repr_html_()
    assert task.last_runs(status="pending")[0].id() == run.id()
    assert task.last_runs(status="success") == []
    assert task.last_runs(limit=0) == []
    with pytest.raises(ValueError, match="all, pending, running, success, failure, timed_out"):
        task.last_runs(status="done")
    with pytest.raises(ValueError, match="limit"):
        task.last_runs(limit=-1)
    with pytest.raises(ValueError, match="limit"):
        run.logs(limit=-1)
    with pytest.raises(sdk.WaitTimeout, match="still pending"):
        task.wait(timeout=0.2)
    with pytest.raises(sdk.WaitTimeout, match="still pending"):
        run.wait(timeout=0.2)
    with pytest.raises(ValueError, match="only scheduled and continuous"):
        task.pause()

    same = client.get_task_by_id(task.id())
    assert same.name() == "once" and same.last_runs()[0].id() == run.id()
    assert orch.list_tasks()[0].id() == task.id()

    assert task.kill() is sdk.TaskStatus.PENDING_KILL
    assert task.status() == "pending_kill"  # its run is still queued
    assert task.active() is False
    assert [t.id() for t in client.list_tasks(killed=True)] == [task.id()]


def test_scheduled_and_continuous_tasks(client: sdk.Client) -> None:
    orch = client.upload_orchestration(bytes_buffer=HELLO, name="hello")
    cron = orch.run_scheduled(
        "cron",
        "*/5 * * * *",
        {"a": 1},
        timeout=30,
        tz="Europe/Berlin",
        overlap="forbid",
        missed="skip",
    )
    loop = orch.run_continuously("loop", {"b": 2})
    once = orch.run_once("once")

    assert cron.task_type() == "Scheduled Run" and loop.task_type() == "Continuous Run"
    assert cron.schedule() == "*/5 * * * *" and loop.schedule() is None
    assert cron.status() == "started" and loop.status() == "started"
    next_run = cron.next_run_at()
    assert next_run is not None
    now = datetime.now(UTC)
    assert now < next_run <= now + timedelta(minutes=5)
    assert next_run.minute % 5 == 0 and next_run.second == 0
    assert loop.next_run_at() is None
    record = on_bus(client, lambda bus: store.get(bus.tasks, f"default.{cron.id()}", TaskRecord))
    assert record is not None
    spec = record[0]
    assert (spec.tz, spec.overlap, spec.missed, spec.timeout_s) == (
        "Europe/Berlin",
        "forbid",
        "skip",
        30,
    )
    assert cron.last_runs() == []  # nothing fires without a scheduler; no run was created

    assert cron.pause() is cron
    assert cron.status() == "paused" and cron.next_run_at() is None and cron.active() is True
    cron.resume()
    assert cron.status() == "started" and cron.next_run_at() is not None

    # newest change first: the resumed task was updated last
    assert [t.name() for t in client.list_tasks()] == ["cron", "once", "loop"]
    assert loop.kill() == "pending_kill"
    assert loop.status() == "killed" and loop.active() is False  # no run to stop
    with pytest.raises(sdk.TaskbusError, match="a killed task cannot be resumed"):
        loop.resume()  # killing is final, and saying so
    assert loop.status() == "killed"
    assert [t.name() for t in client.list_tasks(killed=True)] == ["loop"]
    assert {t.name() for t in client.list_tasks()} == {"cron", "once", "loop"}
    assert once.active() is True


def test_reprs_and_html_are_tables_and_escaped(client: sdk.Client) -> None:
    assert repr(client.list_orchestrations()) == "(no orchestrations)"
    assert repr(client.list_tasks()) == "(no tasks)"
    orch = client.upload_orchestration(bytes_buffer=HELLO, name="<b>x</b>", file_name="a&b.zip")
    task = orch.run_once("<b>x</b>")
    sched = orch.run_scheduled("<i>s</i>", "0 3 * * *")

    orchs = client.list_orchestrations()
    text = repr(orchs)
    assert _header(text) == " ".join(ORCH_COLUMNS.split())
    assert f"{orch.sha()[:6]}...{orch.sha()[-6:]}" in text and orch.sha() not in text
    assert orch.created_at().isoformat(timespec="seconds") in text
    assert str(orchs) == text
    html = orchs._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html and "a&amp;b.zip" in html
    assert "<th>filename</th>" in html

    tasks = client.list_tasks()
    text = repr(tasks)
    assert _header(text) == " ".join(TASK_COLUMNS.split())
    rows = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert "Temporary Run" in rows[task.id()] and " - " in rows[task.id()]  # no schedule
    assert "0 3 * * *" in rows[sched.id()] and "Scheduled Run" in rows[sched.id()]
    assert "+00:00" in rows[task.id()]
    html = tasks._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "&lt;i&gt;s&lt;/i&gt;" in html
    assert "<b>x</b>" not in html and "<i>s</i>" not in html

    runs = task.last_runs()
    assert _header(repr(runs)) == "task id run id status created at updated at"
    assert "&lt;" not in runs._repr_html_() and task.id() in runs._repr_html_()

    for one in (orch, task, runs[0]):
        assert one.id() in repr(one) and one.id() in str(one)
        assert one.id() in one._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in task._repr_html_() and "<b>x</b>" not in task._repr_html_()
    assert "Temporary Run" in repr(task)


async def test_async_client_methods(nats_url: str) -> None:
    async with sdk.AsyncClient(nats_url) as wl:
        orch = await wl.upload_orchestration(bytes_buffer=HELLO, name="hello")
        assert isinstance(orch, sdk.AsyncOrchestration)
        assert await orch.status() == "pending_packaging"
        task = await orch.run_once("once", {"x": 1})
        assert isinstance(task, sdk.AsyncTask)
        assert await task.status() == "pending"
        assert task.input_data() == {"x": 1}
        listed = await wl.list_tasks()
        assert isinstance(listed, sdk.TaskList) and listed[0].id() == task.id()
        runs = await task.last_runs()
        assert isinstance(runs[0], sdk.AsyncTaskRun)
        assert await runs[0].logs() == []
        with pytest.raises(sdk.WaitTimeout):
            await task.wait(timeout=0.2)
        assert (await wl.get_task_by_id(task.id())).name() == "once"
        assert [o.id() for o in await wl.list_orchestrations()] == [orch.id()]
        with pytest.raises(sdk.TaskNotFound):
            await wl.get_task_by_id("7b5f0e8a-3c1d-4f2e-9a6b-1c2d3e4f5a6b")
        assert await task.kill() == "pending_kill"
        assert [t.id() for t in await wl.list_tasks(killed=True)] == [task.id()]
        assert wl.in_task() is False
    with pytest.raises(RuntimeError, match="closed"):
        await wl.list_tasks()


def test_closed_client_says_so(nats_url: str) -> None:
    wl = sdk.Client(nats_url)
    orch = wl.upload_orchestration(bytes_buffer=HELLO)
    wl.close()
    with pytest.raises(RuntimeError, match="closed"):
        orch.status()
    wl.close()  # closing twice is fine
    assert os.environ.get("TASKBUS_TASK_ID") is None
