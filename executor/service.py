"""The process around the executor: logging, signals, the connection, the summary line, the
exit code (the shell every daemon shares is ``broker.service``).

``main(argv)``: settings from the command line, then ``serve`` until SIGINT/SIGTERM; exits 0
after a clean stop, 3 when no server answered, 2 when the credential may not take runs.

next: ``executor.daemon`` (the ``Executor`` that does the work).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

import anyio

from broker import roles, service
from broker.errors import ExitCode
from executor.daemon import Executor
from executor.settings import ExecutorSettings

log = logging.getLogger("executor")


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """``python -m executor``: run the executor until SIGINT/SIGTERM; its exit code."""
    settings = ExecutorSettings.from_cli(argv)
    service.configure_logging()
    return service.run(functools.partial(serve, settings), log)


async def serve(settings: ExecutorSettings) -> None:
    """Connect, run an ``Executor`` until a signal stops it (a second one kills its runs at
    once), log its summary line, close."""
    bus = await service.connect_as(settings.connect, "take run requests", roles.Role.EXECUTOR)
    try:
        executor = Executor(settings, bus)
        async with anyio.create_task_group() as tg:
            await tg.start(service.watch_signals, functools.partial(_stop, executor))
            started = time.monotonic()
            try:
                await executor.run()
            finally:
                log.info("%s", executor.summary(time.monotonic() - started))
            tg.cancel_scope.cancel()
    finally:
        await service.close(bus)


def _stop(executor: Executor, signal_name: str) -> None:
    executor.stop(signal_name, now=executor.stopping)
