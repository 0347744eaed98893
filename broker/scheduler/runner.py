"""``run(settings)``: the process around the scheduler — logging, signals, the connection."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from broker import roles
from broker.connection import connect
from broker.errors import TaskbusError, exit_status
from broker.scheduler.daemon import Scheduler
from broker.scheduler.settings import SchedulerSettings

log = logging.getLogger("broker.scheduler")

CLOSE_TIMEOUT_S = 2.0


def run(settings: SchedulerSettings) -> None:
    """Run the scheduler until SIGINT/SIGTERM; exits with status 3 if it cannot connect."""
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(settings))
    except TaskbusError as exc:
        log.error("%s", exc)
        raise SystemExit(exit_status(exc)) from None


async def serve(settings: SchedulerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stopper(stop, sig, settings.shutdown_grace_s))
    bus = await connect(settings.connect, reconnect_forever=True)
    try:
        bus.require_role("fire scheduled runs", roles.Role.SCHEDULER)
    except BaseException:
        await bus.close()
        raise
    url = bus.nc.connected_url
    log.info("scheduler connected to %s", url.geturl() if url else settings.connect.urls)
    try:
        await Scheduler(bus, settings).serve(stop)
    finally:
        try:  # draining waits for the server: bounded, so SIGTERM works with the bus away
            await asyncio.wait_for(bus.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            await bus.nc.close()


def _stopper(stop: asyncio.Event, sig: signal.Signals, grace_s: float) -> Callable[[], None]:
    def handler() -> None:
        if not stop.is_set():
            log.info("%s: stopping (fires in flight get %.0f s)", sig.name, grace_s)
        stop.set()

    return handler
