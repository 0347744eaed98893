"""The process around the scheduler: logging, signals, the connection, the summary line, the
exit code (the shell every daemon shares is ``broker.service``).

``main(argv)``: settings from the command line, then ``serve`` until SIGINT/SIGTERM; exits 0
after a clean stop, 3 when no server answered, 2 when the credential may not fire runs.

next: ``broker.scheduler.daemon`` (the ``Scheduler`` that does the work).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence

import anyio

from broker import roles, service
from broker.errors import ExitCode
from broker.scheduler.daemon import Scheduler
from broker.scheduler.settings import SchedulerSettings

log = logging.getLogger("broker.scheduler")


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """``python -m broker.scheduler``: run the scheduler until SIGINT/SIGTERM; its exit code."""
    return run(SchedulerSettings.from_cli(argv))


def run(settings: SchedulerSettings) -> ExitCode:
    """Run the scheduler until SIGINT/SIGTERM; its exit code."""
    service.configure_logging(settings.log_level)
    return service.run(functools.partial(serve, settings), log)


async def serve(settings: SchedulerSettings) -> None:
    """Watch signals (from before connecting: a stop then is kept), connect, run a
    ``Scheduler`` until a signal, log its summary line, close."""
    stop = asyncio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(service.watch_signals, functools.partial(_stop, stop, settings))
        work, role = "fire scheduled runs", roles.Role.SCHEDULER
        bus = await service.connect_as(settings.connect, work, role)
        url = bus.nc.connected_url
        log.info("scheduler connected to %s", url.geturl() if url else settings.connect.urls)
        try:
            scheduler = Scheduler(bus, settings)
            started = time.monotonic()
            try:
                await scheduler.serve(stop)
            finally:
                log.info("%s", scheduler.summary(time.monotonic() - started))
        finally:
            await service.close(bus)
        tg.cancel_scope.cancel()


def _stop(stop: asyncio.Event, settings: SchedulerSettings, signal_name: str) -> None:
    if not stop.is_set():
        grace_s = settings.shutdown_grace_s
        log.info("%s: stopping (fires in flight get %.0f s)", signal_name, grace_s)
    stop.set()
