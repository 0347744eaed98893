"""Turning record fields into the short strings a person reads in a table cell."""

from __future__ import annotations

from datetime import datetime, tzinfo

DASH = "-"
SEP = " \u203a "  # between the parts of a screen's name


def display_url(url: str) -> str:
    """A server URL as the header shows it: without a user or password in it."""
    scheme, sep, rest = url.strip().rpartition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme}{sep}{host}"


def short_id(value: str, length: int = 8) -> str:
    return value[:length] if value else DASH


def short_sha(sha: str) -> str:
    """The SDK's form: first 6 + ``...`` + last 6."""
    if len(sha) <= 15:
        return sha or DASH
    return f"{sha[:6]}...{sha[-6:]}"


def span(seconds: float) -> str:
    """A compact duration: ``850ms``, ``12s``, ``4m05s``, ``3h02m``, ``2d04h``."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{int(seconds)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def age(moment: datetime | None, now: datetime) -> str:
    """``"12s ago"``-style age, ``-`` when there is no moment."""
    if moment is None:
        return DASH
    return f"{span((now - moment).total_seconds())} ago"


def countdown(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return DASH
    delta = (moment - now).total_seconds()
    if delta <= 0:
        return "now"
    return f"in {span(delta)}"


def duration(start: datetime | None, end: datetime | None, now: datetime) -> str:
    """How long a run took, or has been running (``end`` None ticks with ``now``)."""
    if start is None:
        return DASH
    return span(((end or now) - start).total_seconds())


def clock_time(moment: datetime | None, zone: tzinfo, *, date: bool = True) -> str:
    if moment is None:
        return DASH
    local = moment.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def stamp(moment: datetime, zone: tzinfo) -> str:
    """A log line's timestamp: time of day with milliseconds."""
    local = moment.astimezone(zone)
    return f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}"


def count(value: int) -> str:
    return f"{value:,}"
