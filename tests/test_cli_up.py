"""``taskbus up --no-console`` as a user runs it: it says where it listens, runs work uploaded
through the SDK, prints a line per run event, stops cleanly on SIGTERM, and a restart on the
same data directory finds every orchestration, task, run and log line."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sdk
from broker.server import EmbeddedServer, ServerSettings, free_port
from broker.settings import ConnectSettings
from console.app import TaskbusApp
from console.state import Link
from tests.helpers import REPO, daemon_env, make_zip
from tests.test_console_support import screen_text, wait_for

EXPECT_TIMEOUT_S = 60.0
READS_CONNECTION = (
    "import sdk\n"
    "ok = sdk.Client().get_connection('db').details()['password'] == 's3cret-42'\n"
    "print('password ok' if ok else 'password wrong')\n"
)


class Up:
    """A running ``taskbus up``, its stdout read line by line on a thread."""

    def __init__(self, port: int, data_dir: Path, cwd: Path = REPO) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "up", "--no-console", "--port", str(port),
             "--data-dir", str(data_dir), "--slots", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # As a user starts it: --data-dir alone says where everything is (the daemons
            # find its keys without the variable the SDK here uses).
            env={k: v for k, v in daemon_env().items() if k != "TASKBUS_DATA_DIR"},
            cwd=cwd,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait for an output line matching ``pattern`` (bounded)."""
        while True:
            try:
                line = self.lines.get(timeout=EXPECT_TIMEOUT_S)
            except queue.Empty:
                seen = "\n".join(self.seen)
                raise AssertionError(f"no line matching {pattern!r} in:\n{seen}") from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self._pump_thread.join(10)
            assert self.process.stdout is not None
            self.process.stdout.close()


def test_up_runs_work_and_a_restart_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TASKBUS_DATA_DIR", str(data_dir))  # the SDK finds up's credentials
    up = Up(port, data_dir)
    try:
        url = up.expect(r"listening on (nats://\S+)").group(1)
        assert url == f"nats://127.0.0.1:{port}"
        up.expect(r"executor \S+ ready")
        # A second stack on the same data directory is refused, and the first goes on.
        second = subprocess.run(
            [sys.executable, "-m", "console.cli", "up", "--no-console", "--port", str(free_port()),
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=daemon_env(), cwd=REPO, timeout=60,
        )  # fmt: skip
        assert second.returncode != 0 and "is in use by taskbus pid" in second.stderr
        with sdk.Client(url) as wl:
            orch = wl.upload_orchestration(
                bytes_buffer=make_zip({"main.py": "import sdk\nprint('hi', sdk.task_args())\n"}),
                name="hello",
            ).wait_until_ready(timeout=60)
            task = orch.run_once("greet", {"who": "world"})
            assert task.wait(timeout=60) == "success"
            run = task.last_runs()[0]
            logs = list(run.logs())
            assert any(line.endswith("hi {'who': 'world'}") for line in logs), logs
            # A connection (up made its key in the data directory) reaches a run.
            wl.create_connection("db", "postgres", {"password": "s3cret-42"})
            reader = wl.upload_orchestration(
                bytes_buffer=make_zip({"main.py": READS_CONNECTION}), name="reader"
            ).wait_until_ready(timeout=60)
            reads = reader.run_once("reads")
            assert reads.wait(timeout=60) == "success", list(reads.last_runs()[0].logs())
            assert any(line.endswith("password ok") for line in reads.last_runs()[0].logs())
        up.expect(rf"greet {run.id()} success")
    finally:
        code = up.stop()
    assert code == 0, "\n".join(up.seen)
    up.expect("taskbus: stopped")

    again = Up(port, data_dir)
    try:
        url = again.expect(r"listening on (nats://\S+)").group(1)
        again.expect(r"runs on record: 2 ")
        with sdk.Client(url) as wl:
            orch_after, _ = wl.list_orchestrations()  # oldest first
            assert (orch_after.id(), orch_after.status()) == (orch.id(), "ready")
            task_after = wl.get_task_by_id(task.id())
            assert task_after.status() == "success"
            assert len(wl.list_tasks()) == 2
            (run_after,) = task_after.last_runs()
            assert run_after.id() == run.id() and run_after.status() == "success"
            assert run_after.exit_code() == 0
            assert list(run_after.logs()) == logs
    finally:
        code = again.stop()
    assert code == 0, "\n".join(again.seen)


def test_up_daemons_ignore_packages_in_the_current_directory(tmp_path: Path) -> None:
    """A folder named like a Taskbus package where `up` is started must not replace it."""
    fake = tmp_path / "project" / "executor"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("raise SystemExit('the wrong executor ran')\n")
    up = Up(free_port(), tmp_path / "data", cwd=fake.parent)
    try:
        ready = up.expect(r"executor (\S+) ready on \S+ \(pid (\d+)")
        executor_id, pid = ready.group(1), int(ready.group(2))
        os.kill(pid, signal.SIGKILL)  # a daemon that dies is restarted
        up.expect(r"executor exited \(code -9\); restarting")
        up.expect(r"executor (?!" + re.escape(executor_id) + r")\S+ ready")
    finally:
        assert up.stop() == 0, "\n".join(up.seen)


def _child_pid(parent: int, name: str) -> int:
    """The pid of ``parent``'s child process called ``name`` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if comm == name and ppid == parent:
            return int(stat.parent.name)
    raise AssertionError(f"no {name} child of {parent}")


def test_up_restarts_a_killed_nats_server_and_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TASKBUS_DATA_DIR", str(data_dir))
    up = Up(free_port(), data_dir)
    try:
        url = up.expect(r"listening on (nats://\S+)").group(1)
        up.expect(r"executor \S+ ready")
        os.kill(_child_pid(up.process.pid, "nats-server"), signal.SIGKILL)
        up.expect(r"nats-server exited \(code -9\); restarting in 1 s \(see \S+nats-server.log\)")
        up.expect(r"nats-server started again")
        # The stack works again: the executor reconnected, a run goes through.
        with sdk.Client(url) as wl:
            orch = wl.upload_orchestration(
                bytes_buffer=make_zip({"main.py": "print('back')\n"}), name="back"
            ).wait_until_ready(timeout=60)
            assert orch.run_once("again").wait(timeout=60) == "success"
    finally:
        code = up.stop()
    assert code == 0, "\n".join(up.seen)
    server_log = (data_dir / "logs" / "nats-server.log").read_text()
    assert server_log.count("Server is ready") == 2, server_log


async def test_the_console_says_why_it_is_disconnected(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "nats", port=0)).start()
    try:
        app = TaskbusApp(ConnectSettings(urls=[server.url]), freeze_gc=False)
        async with app.run_test(size=(160, 30)) as pilot:
            await wait_for(pilot, lambda: app.state.link is Link.CONNECTED)
            await asyncio.to_thread(server.stop)  # as a killed server of `taskbus up`
            await wait_for(pilot, lambda: "connection refused" in screen_text(app))
            assert "reconnecting… (server not running: connection refused)" in screen_text(app)
    finally:
        server.stop()
