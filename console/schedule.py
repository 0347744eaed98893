"""Next fire times for countdowns and the spec pane, from ``broker.cron`` (the scheduler's own
rules, DST included), cached per task and recomputed only once the cached instant has passed,
so a 5 Hz redraw over thousands of scheduled tasks costs a dict lookup per row."""

from __future__ import annotations

import logging
from datetime import datetime

from broker import cron
from broker.errors import TaskbusError

log = logging.getLogger(__name__)


def next_fires(schedule: str, tz: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next ``count`` fire instants strictly after ``after``, in UTC; [] if invalid."""
    fires: list[datetime] = []
    try:
        for _ in range(count):
            after = cron.next_fire(schedule, tz or "UTC", after)
            fires.append(after)
    except (TaskbusError, ValueError, KeyError, TypeError) as exc:
        log.debug("cannot compute fires of %r in %s: %s", schedule, tz, exc)
    return fires


class FireCache:
    """Next fire per task, keyed by (schedule, tz), recomputed once ``now`` has passed it."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, str, datetime | None]] = {}

    def next_fire(self, key: str, schedule: str, tz: str, now: datetime) -> datetime | None:
        cached = self._cache.get(key)
        if cached is not None:
            c_schedule, c_tz, c_next = cached
            if c_schedule == schedule and c_tz == tz and (c_next is None or c_next > now):
                return c_next
        fires = next_fires(schedule, tz, now)
        nxt = fires[0] if fires else None
        self._cache[key] = (schedule, tz, nxt)
        return nxt
