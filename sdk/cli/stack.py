"""``taskbus up`` (the embedded stack) and ``taskbus server`` (its nats-server alone).

``up`` starts, in order: the nats-server on the data directory, one executor and the
scheduler as child processes (their output goes to ``<data-dir>/logs/``), then the console
in the foreground — or, without a console, a live line per run event. Ctrl+C or SIGTERM
stops everything in reverse order; the data stays, so the next ``up`` finds it all.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

from broker.connection import connect
from broker.errors import ServerError
from broker.server import EmbeddedServer, ServerSettings, die_with_parent
from broker.settings import ConnectSettings, default_data_dir
from sdk.cli import FAILED, OK, error
from sdk.cli.daemons import SAFE_PATH, available, child_env, console_entry

# A child's own clean stop must fit: the executor lets runs finish for 10 s, then gives them
# 5 s from SIGTERM to SIGKILL, then records their outcome on the bus.
STOP_GRACE_S = 25.0
# A daemon that dies while the stack runs is restarted: 1 s, doubling to 30 s, reset after it
# stayed up a minute.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_HEALTHY_S = 60.0


class Child:
    """A daemon child process in its own session (a terminal's Ctrl+C reaches only us),
    restarted with back-off if it dies while the stack runs."""

    def __init__(
        self,
        what: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str],
        notify: Callable[[str], None],
    ) -> None:
        self.what = what
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.notify = notify
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = self._spawn()
        threading.Thread(target=self._supervise, name=f"supervise-{what}", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, *SAFE_PATH, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent,  # a killed `up` leaves no daemon behind
            )

    def _supervise(self) -> None:
        backoff_s = RESTART_BACKOFF_S
        while True:
            started = time.monotonic()
            code = self.process.wait()
            if self._stopping.wait(0.2):  # a stop in progress: not a crash
                return
            if time.monotonic() - started > RESTART_HEALTHY_S:
                backoff_s = RESTART_BACKOFF_S
            self.notify(
                f"{self.what} exited (code {code}); restarting in {backoff_s:.0f} s "
                f"(see {self.log_path})"
            )
            if self._stopping.wait(backoff_s):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process = self._spawn()
                self.restarts += 1
            backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _lock_data_dir(data_dir: Path) -> None:
    """One stack per data directory: a second nats-server on the same JetStream store, or a
    second executor on the same work dir, would corrupt the first one's state."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "taskbus.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ServerError(
            f"{data_dir} is in use by {holder}. Stop that stack first, or give this one its "
            f"own --data-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"taskbus pid {os.getpid()}")
    handle.flush()
    _held_locks.append(handle)  # held until this process exits


_held_locks: list[IO[str]] = []


def _start_server(args: argparse.Namespace) -> tuple[EmbeddedServer, Path]:
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    _lock_data_dir(data_dir)
    settings = ServerSettings(data_dir=data_dir, port=args.port, die_with_parent=True)
    server = EmbeddedServer(settings).start()
    try:
        asyncio.run(_provision(server.url))
    except BaseException:
        server.stop()
        raise
    return server, data_dir


async def _provision(url: str) -> None:
    bus = await connect(ConnectSettings(urls=[url], name="taskbus-up"))
    await bus.close()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) all stop us cleanly (SIGINT even when
    the shell that started us in the background set it to be ignored)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _terminate)


def _quiet() -> None:
    """While stopping, further signals must not cut the clean-up short."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def server(args: argparse.Namespace) -> int:
    _on_stop_signals()
    srv, data_dir = _start_server(args)
    print(f"taskbus: nats-server listening on {srv.url} (data in {data_dir})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        _quiet()
        srv.stop()
        print("taskbus: server stopped", flush=True)
    return OK


def up(args: argparse.Namespace) -> int:
    from sdk.cli import events

    _on_stop_signals()
    srv, data_dir = _start_server(args)
    url = srv.url
    settings = ConnectSettings(urls=[url], name="taskbus-up")
    env = child_env(settings)
    logs = data_dir / "logs"
    print(f"taskbus: nats-server listening on {url} (data in {data_dir})", flush=True)
    children: list[Child] = []
    quiet_console = not args.no_console and console_entry() is not None

    def notify(message: str) -> None:
        log_line = f"taskbus: {message}"
        if quiet_console:  # the console owns the terminal; it shows the executor as lost
            with (logs / "up.log").open("a") as handle:
                handle.write(log_line + "\n")
        else:
            print(log_line, flush=True)

    try:
        if available("executor"):
            executor_argv = ["-m", "executor", "--url", url, "--slots", str(args.slots)]
            executor_argv += ["--work-dir", str(data_dir / "executor")]
            children.append(Child("executor", executor_argv, logs / "executor.log", env, notify))
        else:
            error("no executor in this installation: runs will stay pending")
        if available("broker.scheduler"):
            scheduler_argv = ["-m", "broker.scheduler", "--url", url]
            children.append(Child("scheduler", scheduler_argv, logs / "scheduler.log", env, notify))
        started = ", ".join(child.what for child in children) or "nothing else"
        print(f"taskbus: started {started} (logs in {logs}); Ctrl+C stops", flush=True)
        run_console = None if args.no_console else console_entry()
        if run_console is not None:
            run_console(settings)
        else:
            events.run(settings)
    except KeyboardInterrupt:
        pass
    finally:
        _quiet()
        for child in reversed(children):
            child.stop()
        srv.stop()
        print("taskbus: stopped", flush=True)
    failed = [c.what for c in children if c.process.returncode not in (0, -signal.SIGTERM)]
    if failed:
        error(f"{', '.join(failed)} exited with an error; see {logs}")
        return FAILED
    return OK
