"""Cron schedules with time zones: validation and fire times.

Standard 5-field cron, and croniter's 6-field form whose last field is seconds. Fire times are
computed in the task's IANA time zone and returned in UTC.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from broker.errors import InvalidSchedule

EXAMPLE = "'*/5 * * * *' (every 5 minutes) or '0 2 * * 1-5' (02:00 on weekdays)"


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            f"Unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'."
        ) from None


def validate(schedule: str, tz: str = "UTC") -> None:
    """Raise ``InvalidSchedule`` naming what is wrong with ``schedule`` or ``tz``."""
    zone(tz)
    if not isinstance(schedule, str) or not schedule.strip():
        raise InvalidSchedule(f"The schedule is empty: give a cron string such as {EXAMPLE}.")
    fields = schedule.split()
    if len(fields) not in (5, 6):
        raise InvalidSchedule(
            f"Invalid cron schedule {schedule!r}: it has {len(fields)} fields, a cron string "
            f"has 5 (minute hour day month weekday) or 6 (… seconds). Example: {EXAMPLE}."
        )
    try:
        croniter(schedule, datetime(2000, 1, 1, tzinfo=zone(tz)))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidSchedule(
            f"Invalid cron schedule {schedule!r}: {exc}. Example: {EXAMPLE}."
        ) from None
