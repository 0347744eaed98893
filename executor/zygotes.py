"""Warm interpreters that fork runs instead of starting a fresh one: a fork skips the
interpreter's start-up and imports.

One ``Zygote`` per interpreter (the executor's own, and each cached virtualenv in use), started
on first use as ``<python> executor/zygote.py <fd>`` in its own session, so it loads exactly
what ``<python> main.py`` would load. Requests and answers travel on a SOCK_SEQPACKET socket;
the run's output pipes are passed as file descriptors. The zygote reaps its children and sends
their exit codes, so a ``ZygoteChild`` is awaited like any child. If a zygote dies, its running
children are killed and their runs end with the reason; the next run starts a new zygote.
Each request carries the lease deadline the zygote's watchdog enforces (``renew``, called by
``executor.heartbeat`` for every heartbeat the server confirmed).

next: ``executor.zygote`` (the other end of the socket, where the run's process is forked).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from executor.process import Launch, signal_group

log = logging.getLogger(__name__)

ZYGOTE_SCRIPT = Path(__file__).with_name("zygote.py")
START_TIMEOUT_S = 30.0
MAX_MESSAGE = 1 << 20


class ZygoteLost(RuntimeError):
    """The zygote exited while a child of it was running: the exit code is unknown."""


@dataclass(eq=False)
class ZygoteChild:
    pid: int
    code: asyncio.Future[int] = field(repr=False)
    fenced: bool = False  # the zygote killed it: the executor's lease ran out

    async def wait(self) -> int:
        return await asyncio.shield(self.code)


class Zygote:
    """One warm interpreter and the children it forked."""

    def __init__(
        self, python: str, env: Mapping[str, str], on_close: Callable[[], None] | None = None
    ) -> None:
        self.python = python
        self._on_close = on_close
        self._env = dict(env)
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._requests: dict[int, asyncio.Future[ZygoteChild]] = {}
        self._children: dict[int, asyncio.Future[int]] = {}
        self._child: dict[int, ZygoteChild] = {}
        self.lease: float | None = None  # the executor's lease (time.monotonic deadline)
        self._ids = itertools.count(1)
        self._starting: asyncio.Lock = asyncio.Lock()
        self.last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._sock is not None

    @property
    def busy(self) -> bool:
        return bool(self._children or self._requests)

    async def start(self) -> None:
        async with self._starting:
            if self._sock is not None:
                return
            loop = asyncio.get_running_loop()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                process = subprocess.Popen(  # noqa: ASYNC220 (awaited through the socket)
                    [self.python, str(ZYGOTE_SCRIPT), str(theirs.fileno()), "--subreaper"],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    env=self._env,
                    cwd="/",
                    start_new_session=True,
                )
            finally:
                theirs.close()
            ours.setblocking(False)
            self._sock, self._process = ours, process
            self._ready = loop.create_future()
            loop.add_reader(ours.fileno(), self._readable)
            try:
                pid = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
            except BaseException:
                self.close()
                raise
            log.debug("zygote %s ready for %s", pid, self.python)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            self._dispatch(json.loads(data))

    def _dispatch(self, message: dict[str, int | str]) -> None:
        if "ready" in message:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(int(message["ready"]))
        elif "exit" in message:
            pid = int(message["exit"])
            child = self._child.pop(pid, None)
            if child is not None and message.get("fenced"):
                child.fenced = True
            code = self._children.pop(pid, None)
            if code is not None and not code.done():
                code.set_result(int(message["code"]))
        elif "id" in message:
            request = self._requests.pop(int(message["id"]), None)
            if request is None or request.done():
                return
            if "error" in message:
                request.set_exception(OSError(f"zygote could not fork: {message['error']}"))
            else:
                pid = int(message["pid"])
                code = self._children[pid] = asyncio.get_running_loop().create_future()
                # The exit message may follow in this very read: hand the future over now.
                child = self._child[pid] = ZygoteChild(pid=pid, code=code)
                request.set_result(child)

    def _lost(self) -> None:
        """The zygote exited: fail what waits on it, kill the children it can no longer reap."""
        if self._sock is not None:
            log.warning("zygote for %s exited", self.python)
        self.close()
        error = ZygoteLost(f"the process launcher for {self.python} exited")
        futures: list[asyncio.Future[ZygoteChild]] | list[asyncio.Future[int]]
        for futures in (list(self._requests.values()), list(self._children.values())):
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        for pid in self._children:
            signal_group(pid, signal.SIGKILL)
        self._requests.clear()
        self._children.clear()
        self._child.clear()

    def renew(self, deadline: float) -> None:
        """Pass the executor's new lease on (see ``executor.zygote``)."""
        self.lease = deadline
        sock = self._sock
        if sock is None:
            return
        try:
            sock.send(json.dumps({"lease": deadline}).encode())
        except BlockingIOError:
            pass  # the next renewal, or the next launch, carries it
        except OSError as exc:
            log.debug("could not renew the lease of the zygote for %s: %r", self.python, exc)

    async def launch(self, launch: Launch) -> ZygoteChild:
        await self.start()
        sock = self._sock
        if sock is None:
            raise ZygoteLost(f"the process launcher for {self.python} is not running")
        self.last_used = time.monotonic()
        request_id = next(self._ids)
        answer: asyncio.Future[ZygoteChild] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = answer
        payload = json.dumps(
            {
                "id": request_id,
                "script": str(launch.script),
                "cwd": str(launch.cwd),
                "env": dict(launch.env),
                "confine": dict(launch.confine),
                "lease": self.lease,
            }
        ).encode()
        while True:
            try:
                socket.send_fds(sock, [payload], [launch.stdout_fd, launch.stderr_fd])
                break
            except BlockingIOError:
                await asyncio.sleep(0.001)
        return await answer

    def close(self) -> None:
        """Stop the zygote (its running children carry on; they are awaited no more)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(1.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class ZygotePool:
    """A zygote per interpreter path; idle ones beyond ``max_idle`` are closed."""

    def __init__(self, env: Mapping[str, str], max_zygotes: int = 8) -> None:
        self._env = dict(env)
        self._env["PYTHONUNBUFFERED"] = "1"
        self._zygotes: dict[str, Zygote] = {}
        self._max = max_zygotes
        self._lease: float | None = None

    def renew(self, deadline: float) -> None:
        """The executor's lease, renewed: every zygote's children may run until ``deadline``."""
        self._lease = deadline
        for zygote in self._zygotes.values():
            zygote.renew(deadline)

    def has(self, python: str) -> bool:
        return python in self._zygotes

    def get(self, python: str, on_close: Callable[[], None] | None = None) -> Zygote:
        """The zygote for ``python`` (created on first use; ``on_close`` runs when it goes)."""
        zygote = self._zygotes.get(python)
        if zygote is None:
            zygote = self._zygotes[python] = Zygote(python, self._env, on_close)
            zygote.lease = self._lease
            self._trim()
        return zygote

    async def warm(self, python: str) -> None:
        await self.get(python).start()

    def discard(self, python: str) -> None:
        zygote = self._zygotes.pop(python, None)
        if zygote is not None:
            zygote.close()

    def _trim(self) -> None:
        idle = sorted((z for z in self._zygotes.values() if not z.busy), key=lambda z: z.last_used)
        while len(self._zygotes) > self._max and idle:
            victim = idle.pop(0)
            self.discard(victim.python)

    def close(self) -> None:
        for python in list(self._zygotes):
            self.discard(python)
