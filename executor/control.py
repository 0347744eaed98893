"""Small pieces the daemon and every run share: why a run must die, keeping a queue message
alive while its work goes on, and best-effort calls whose failure is only worth a debug
line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg

from broker.models import RunControl, TaskRecord

log = logging.getLogger(__name__)


def kill_reason(task: TaskRecord | None, control: RunControl | None) -> str | None:
    """Why a run must be killed, from its task record and its own control record (either may
    be unknown: None); None when neither asks for it."""
    if task is not None and task.killed:
        return "task killed"
    if control is not None and control.kill:
        return control.reason or "kill requested"
    return None


async def keep_alive(current: Callable[[], Msg], interval_s: float, what: str) -> None:
    """``in_progress()`` on the latest delivery every ``interval_s`` until cancelled, so the
    queue does not redeliver work that is still going on."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await current().in_progress()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("in_progress for %s failed: %s", what, exc)


async def quietly(awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.debug("ignored: %r", exc)
