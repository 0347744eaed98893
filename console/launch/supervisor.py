"""A daemon ``taskbus up`` keeps running: the nats-server, the executor, the scheduler.

``Supervisor`` starts one (from the calling thread), then a thread waits for it to exit; an
exit while the stack runs is a crash: it says so through ``notify`` and starts it again after
a back-off (``broker.backoff.Backoff``: 1 s doubling to 30 s, reset once it stayed up a
minute). ``stop()``
ends the supervision first, then the daemon, so a stop is never taken for a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from broker.backoff import Backoff
from broker.errors import TaskbusError
from broker.service import die_with_parent
from console.launch.daemons import SAFE_PATH

# A child's own clean stop must fit: the executor lets runs finish for 10 s, then gives them
# 5 s from SIGTERM to SIGKILL, then records their outcome on the bus.
STOP_GRACE_S = 25.0
# How long after an exit a stop may still be on its way (the exit was caused by it).
STOP_SETTLE_S = 0.2


class Daemon(Protocol):
    """What a supervisor needs from what it runs."""

    def wait(self) -> int:
        """Block until it exits; its exit code (negative: the signal that ended it)."""
        ...

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM), within a bounded time (``wait()`` then returns at once)."""
        ...


class ChildProcess:
    """``python -P <argv>`` in its own session (a terminal's Ctrl+C reaches only ``up``),
    output appended to ``log_path``, SIGTERM'd if ``up`` dies (Linux)."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *SAFE_PATH, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,  # a killed `up` leaves no daemon behind
            )

    def wait(self) -> int:
        return self.process.wait()

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class Supervisor:
    """One daemon, restarted with back-off when it dies until ``stop()``."""

    def __init__(
        self,
        what: str,
        start: Callable[[], Daemon],
        log_path: Path,
        notify: Callable[[str], None],
    ) -> None:
        self.what = what
        self.log_path = log_path
        self.notify = notify
        self.restarts = 0
        self.returncode: int | None = None  # the last exit code seen
        self._start = start
        self._backoff = Backoff(first_s=1.0, max_s=30.0, healthy_s=60.0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.daemon = start()
        self._thread = threading.Thread(target=self._supervise, name=f"supervise-{what}")
        self._thread.daemon = True
        self._thread.start()

    def _supervise(self) -> None:
        while True:
            started = time.monotonic()
            self.returncode = self.daemon.wait()
            if self._stopping.wait(STOP_SETTLE_S):  # a stop in progress: not a crash
                return
            reason = f"{self.what} exited (code {self.returncode})"
            if not self._restart(reason, time.monotonic() - started):
                return

    def _restart(self, reason: str, uptime_s: float) -> bool:
        """Start it again after the back-off (and again, while starting fails); False when a
        stop came first."""
        while True:
            delay_s = self._backoff.after(uptime_s)
            self.notify(f"{reason}; restarting in {delay_s:.0f} s (see {self.log_path})")
            if self._stopping.wait(delay_s):
                return False
            with self._lock:
                if self._stopping.is_set():
                    return False
                try:
                    self.daemon = self._start()
                except TaskbusError as exc:  # e.g. its port still taken
                    reason = f"{self.what} did not start again ({str(exc).splitlines()[0]})"
                    uptime_s = 0.0
                    continue
                self.restarts += 1
                self.returncode = None
                self.notify(f"{self.what} started again")
                return True

    def stop(self) -> int:
        """Stop supervising, then the daemon; its exit code."""
        with self._lock:
            self._stopping.set()
            daemon = self.daemon
        daemon.stop()
        self.returncode = daemon.wait()
        return self.returncode
