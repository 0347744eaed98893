"""The process shell every Taskbus daemon shares: logging, signals, connecting with the daemon's
role, a bounded close, the exit code, and the parent-death signal for children (the restart
back-off is ``broker.backoff``).

The executor and the scheduler have the same layout:

- ``daemon``: the daemon class (``executor.daemon.Executor``,
  ``broker.scheduler.daemon.Scheduler``); it does the work and can say what it did
  (``summary()``, the one line logged at shutdown);
- ``service``: ``serve(settings)`` connects (``connect_as``: the credential's role checked
  first), runs the daemon until SIGINT/SIGTERM (``watch_signals``), logs the summary line and
  closes (``close``); ``main(argv)`` sets up logging and turns the end into an exit code
  (``run``: ``broker.errors.ExitCode``, the ``taskbus`` CLI's codes);
- ``settings``: one typed object, from the command line;
- ``__main__``: ``sys.exit(main())``.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.abc

from broker.errors import ExitCode, TaskbusError, exit_status

if TYPE_CHECKING:
    from broker.connection import Bus
    from broker.settings import ConnectSettings

E = TypeVar("E", bound=BaseException)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Closing drains (flushes what was published), which waits for the server: bounded, so a
# SIGTERM still ends a daemon whose server is gone.
CLOSE_TIMEOUT_S = 2.0


def configure_logging(level: int | str = logging.INFO) -> None:
    """One line per record on stderr, the same format in every daemon."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    quiet_asyncio()


def quiet_asyncio() -> None:
    """asyncio warns "returning true from eof_received() has no effect when using ssl" on
    every TLS connection nats-py closes: noise, not a problem; its errors still show."""
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def run(serve: Callable[[], Awaitable[None]], log: logging.Logger) -> ExitCode:
    """Run ``serve`` on a new event loop; how it ended as an exit code. A Taskbus error that
    stopped it (also from inside a task group) is logged as one line, never a traceback."""
    try:
        anyio.run(serve)
    except BaseException as exc:
        error = _only(exc, TaskbusError)
        if error is not None:
            log.error("%s", error)
            return exit_status(error)
        if _only(exc, KeyboardInterrupt) is not None:  # a SIGINT before signals are watched
            return ExitCode.INTERRUPTED
        raise
    return ExitCode.OK


def _only(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` if it is a ``kind``, or the first of a task group's errors when all are."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kind)
        if matched is not None and rest is None:
            return _only(matched.exceptions[0], kind)
    return None


async def connect_as(settings: ConnectSettings, work: str, role: str) -> Bus:
    """Connect (reconnecting for ever once connected), then check that the credential's role
    may do ``work`` (``PermissionDenied`` if not, the connection closed)."""
    from broker.connection import connect

    bus = await connect(settings, reconnect_forever=True)
    try:
        bus.require_role(work, role)
    except BaseException:
        await bus.close()
        raise
    return bus


async def close(bus: Bus, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Drain the connection, at most ``timeout_s``; then just close it."""
    with anyio.move_on_after(timeout_s) as drain:
        await bus.close()
    if drain.cancelled_caught:
        await bus.nc.close()


async def watch_signals(
    on_signal: Callable[[str], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """``on_signal(name)`` for every SIGINT/SIGTERM until cancelled; started (``tg.start``)
    once they no longer interrupt or end the process."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            on_signal(signal.Signals(signum).name)


_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """In a ``preexec_fn``: the child gets ``sig`` when the thread that started it dies
    (Linux), so a killed parent never leaves its children behind. Start such children from a
    thread that lives as long as the parent (the main thread, the event loop's). A UID switch
    clears the setting: call it after one."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, sig)


def not_dumpable() -> None:
    """This process's /proc (environ, fds, memory, root) becomes readable only with
    CAP_SYS_PTRACE: not by the runs an executor starts, even those sharing its UID."""
    if _libc is not None:
        _libc.prctl(_PR_SET_DUMPABLE, 0)
