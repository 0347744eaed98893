"""Cron schedules with time zones: validation and fire times.

Standard 5-field cron (``minute hour day-of-month month day-of-week``), and croniter's 6-field
form whose last field is seconds. Fire times are computed in the task's IANA time zone and
returned in UTC; every function here is pure (no clock, no bus), so the SDK, the console and
the scheduler agree on every instant.

Daylight saving time, in the way cronie (the cron of most Linux distributions) does it, with
the schedule's *hour field* deciding which rule applies:

* **Fixed hours** (the hour field is not ``*``, e.g. ``30 2 * * *``): each matching wall-clock
  time fires once per day.

  - Spring forward (Europe/Berlin, 2024-03-31: clocks jump 02:00 CET → 03:00 CEST, there is
    no 02:30): the fire happens at the first instant after the gap, 03:00 CEST = 01:00 UTC.
    Several times inside the gap (``*/15 2 * * *``) collapse into that one fire.
  - Fall back (2024-10-27: 02:00-02:59 happens twice, first CEST then CET): the fire happens
    at the first occurrence only, 02:30 CEST = 00:30 UTC; the repeated 02:30 CET does not fire.

* **Every hour** (the hour field is ``*``, e.g. ``*/15 * * * *``, ``30 * * * *``, and every
  seconds-level schedule that runs all day): the schedule follows real time. Wall-clock times
  that do not exist are simply not there (``30 * * * *`` fires 01:30 CET then 03:30 CEST, one
  hour apart), and a repeated hour fires in both passes (``*/15 * * * *`` keeps firing every
  15 minutes through the repeated hour).

Two instants are never returned twice, and each instant is a whole second.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from broker.errors import InvalidSchedule

EXAMPLE = "'*/5 * * * *' (every 5 minutes) or '0 2 * * 1-5' (02:00 on weekdays)"
LAYOUT = "minute hour day-of-month month day-of-week"

# (name, what it takes, an example) per field, in croniter's order: seconds come last.
_FIELDS = (
    ("minute", "0-59", "'*/15' or '0,30'"),
    ("hour", "0-23", "'2' or '9-17'"),
    ("day-of-month", "1-31", "'1' or '1,15'"),
    ("month", "1-12 or jan-dec", "'*' or 'jan,jul'"),
    ("day-of-week", "0-6 or sun-sat (7 is sunday too)", "'1-5' or 'mon,fri'"),
    ("second", "0-59", "'*/10' or '0'"),
)

_SECOND = timedelta(seconds=1)
_EPSILON = timedelta(microseconds=1)
# Time-zone transitions are found by sampling the offset this often and bisecting each change
# to the second; no zone has had two transitions within six hours.
_SAMPLE_S = 6 * 3600
# A search hops from one constant-offset stretch to the next at most this many times
# (two transitions a year, or a pseudo-boundary every few years: > 50 years of search).
_MAX_HOPS = 128
_HORIZON_YEARS = 3  # no transition for this long: a pseudo-boundary keeps the search bounded


def zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or not tz.strip():
        raise InvalidSchedule(
            f"Invalid time zone {tz!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'."
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
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
            f"Invalid cron schedule {schedule!r}: it has {len(fields)} field"
            f"{'' if len(fields) == 1 else 's'}, a cron string has 5 ({LAYOUT}) or 6 "
            f"(… second). Example: {EXAMPLE}."
        )
    for index, value in enumerate(fields):
        name, takes, example = _FIELDS[index]
        probe = ["*"] * len(fields)
        probe[index] = value
        problem = _problem(" ".join(probe))
        if problem:
            raise InvalidSchedule(
                f"Invalid cron schedule {schedule!r}: the {name} field {value!r} is not valid "
                f"({problem}); {name} takes {takes}, e.g. {example}. Example schedule: "
                f"{EXAMPLE}."
            )
    problem = _problem(schedule)
    if problem:
        raise InvalidSchedule(f"Invalid cron schedule {schedule!r}: {problem}. Example: {EXAMPLE}.")
    try:
        next_fire(schedule, tz, datetime(2000, 1, 1, tzinfo=UTC))
    except InvalidSchedule:
        raise InvalidSchedule(
            f"Invalid cron schedule {schedule!r}: it never fires (no date matches its "
            f"day-of-month and month, e.g. '0 0 30 2 *' asks for February 30th). "
            f"Example: {EXAMPLE}."
        ) from None


def _problem(expression: str) -> str:
    """croniter's complaint about ``expression``, or "" when it parses."""
    try:
        croniter.expand(expression)
    except Exception as exc:  # croniter raises several unrelated classes for bad input
        text = str(exc)
        if "hash" in text.lower():
            return "'H' (hashed) values are not supported"
        if "out of range" in text:
            return "a value is out of range"
        if "step" in text:
            return "a step must be a positive number within the field's range"
        return "not a number, range (a-b), step (*/n), list (a,b) or name"
    return ""


# --- Fire times --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """A parsed schedule: a naive croniter (wall-clock arithmetic) and the DST rule to use."""

    tz: str
    every_hour: bool
    cron: Any  # croniter: stateful, so every use holds `lock`
    lock: threading.Lock

    def naive_next(self, start: datetime) -> datetime:
        with self.lock:
            self.cron.set_current(start, force=True)
            try:
                result: datetime = self.cron.get_next(datetime)
            except Exception:  # CroniterBadDateError: no date ever matches
                raise InvalidSchedule("the schedule never fires") from None
        return result

    def naive_prev(self, start: datetime) -> datetime:
        with self.lock:
            self.cron.set_current(start, force=True)
            try:
                result: datetime = self.cron.get_prev(datetime)
            except Exception:
                raise InvalidSchedule("the schedule never fires") from None
        return result


@lru_cache(maxsize=4096)
def _spec(schedule: str, tz: str) -> _Spec:
    zone(tz)
    try:
        expanded, _ = croniter.expand(schedule)
        cron = croniter(schedule, datetime(2000, 1, 1))
    except Exception:
        validate(schedule, tz)  # raises with the field named
        raise
    hours = expanded[1]
    every_hour = hours == ["*"] or set(hours) == set(range(24))
    return _Spec(tz=tz, every_hour=every_hour, cron=cron, lock=threading.Lock())


@dataclass(frozen=True)
class _Stretch:
    """A stretch of time with one UTC offset: [lo, hi), offsets before and after it."""

    lo: datetime
    hi: datetime
    off: timedelta
    off_before: timedelta
    off_after: timedelta


def _offset(tz: ZoneInfo, ts: int) -> timedelta:
    offset = datetime.fromtimestamp(ts, tz).utcoffset()
    return offset if offset is not None else timedelta(0)


@lru_cache(maxsize=1024)
def _transitions(tz: str, year: int) -> tuple[tuple[int, timedelta], ...]:
    """(instant, new offset) of every offset change in one UTC year, to the second."""
    info = ZoneInfo(tz)
    start = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    changes: list[tuple[int, timedelta]] = []
    ts, off = start, _offset(info, start)
    while ts < end:
        nxt = min(ts + _SAMPLE_S, end)
        new = _offset(info, nxt)
        if new != off:
            lo, hi = ts, nxt  # off at lo, new at hi: find the first second with the new one
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(info, mid) == off:
                    lo = mid
                else:
                    hi = mid
            changes.append((hi, new))
        ts, off = nxt, new
    return tuple(changes)


def _stretch(tz: str, at: datetime) -> _Stretch:
    """The constant-offset stretch that contains instant ``at``."""
    year = at.year
    ts = at.timestamp()
    changes = [c for y in range(year - 1, year + _HORIZON_YEARS) for c in _transitions(tz, y)]
    instants = [c[0] for c in changes]
    index = bisect.bisect_right(instants, ts)  # changes[index - 1] <= at < changes[index]
    off = _offset(ZoneInfo(tz), int(ts // 1))
    if index > 0:
        lo_ts = instants[index - 1]
        off_before = changes[index - 2][1] if index > 1 else _offset(ZoneInfo(tz), lo_ts - 1)
    else:
        lo_ts = int(datetime(year - 1, 1, 1, tzinfo=UTC).timestamp())
        off_before = off
    if index < len(changes):
        hi_ts, off_after = instants[index], changes[index][1]
    else:
        hi_ts = int(datetime(year + _HORIZON_YEARS, 1, 1, tzinfo=UTC).timestamp())
        off_after = off
    return _Stretch(
        lo=datetime.fromtimestamp(lo_ts, UTC),
        hi=datetime.fromtimestamp(hi_ts, UTC),
        off=off,
        off_before=off_before,
        off_after=off_after,
    )


def _naive(instant: datetime, offset: timedelta) -> datetime:
    return (instant + offset).replace(tzinfo=None)


def _utc(wall: datetime, offset: timedelta) -> datetime:
    return (wall - offset).replace(tzinfo=UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: pass an aware datetime")
    return value.astimezone(UTC)


def next_fire(schedule: str, tz: str, after: datetime) -> datetime:
    """The first fire time of ``schedule`` (in zone ``tz``) strictly after ``after``, in UTC."""
    return _next_cached(schedule, tz, _floor_second(_as_utc(after)))


def prev_fire(schedule: str, tz: str, before: datetime) -> datetime:
    """The last fire time of ``schedule`` strictly before ``before``, in UTC."""
    return _prev(_spec(schedule, tz), _as_utc(before))


def fires_between(
    schedule: str, tz: str, after: datetime, until: datetime, limit: int | None = None
) -> list[datetime]:
    """Fire times in ``(after, until]``, oldest first; with ``limit``, only the newest ones."""
    spec = _spec(schedule, tz)
    after, until = _as_utc(after), _as_utc(until)
    if limit is not None:
        newest: list[datetime] = []
        cursor = until + _EPSILON
        while len(newest) < limit:
            cursor = _prev(spec, cursor)
            if cursor <= after:
                break
            newest.append(cursor)
        return newest[::-1]
    result: list[datetime] = []
    cursor = after
    while True:
        cursor = _next_cached(schedule, tz, _floor_second(cursor))
        if cursor > until:
            return result
        result.append(cursor)


def _floor_second(value: datetime) -> datetime:
    # Fires are whole seconds, so "after 12:00:00.5" and "after 12:00:00" give the same answer:
    # flooring lets one cached answer serve every task that shares a schedule.
    return value.replace(microsecond=0)


@lru_cache(maxsize=65536)
def _next_cached(schedule: str, tz: str, after: datetime) -> datetime:
    return _next(_spec(schedule, tz), after)


def _next(spec: _Spec, after: datetime) -> datetime:
    stretch = _stretch(spec.tz, after)
    start = _naive(after, stretch.off)  # candidates strictly after this wall time
    for _ in range(_MAX_HOPS):
        candidate = spec.naive_next(start)
        repeat_end = _naive(stretch.lo, stretch.off_before)  # wall times < this happened before
        if not spec.every_hour and stretch.off_before > stretch.off and candidate < repeat_end:
            candidate = spec.naive_next(repeat_end - _SECOND)  # fall back: first pass only
        if _utc(candidate, stretch.off) < stretch.hi:
            return _utc(candidate, stretch.off)
        gap_end = _naive(stretch.hi, stretch.off_after)  # wall times in [hi+off, this) are gone
        if not spec.every_hour and stretch.off_after > stretch.off and candidate < gap_end:
            return stretch.hi  # spring forward: the fire happens when the clock resumes
        stretch = _stretch(spec.tz, stretch.hi)
        start = _naive(stretch.lo, stretch.off) - _SECOND
    raise InvalidSchedule("the schedule never fires")


def _prev(spec: _Spec, before: datetime) -> datetime:
    stretch = _stretch(spec.tz, before - _EPSILON)
    start = _naive(before, stretch.off)  # candidates strictly before this wall time
    for _ in range(_MAX_HOPS):
        candidate = spec.naive_prev(start)
        repeat_end = _naive(stretch.lo, stretch.off_before)
        repeated = stretch.off_before > stretch.off and candidate < repeat_end
        if _utc(candidate, stretch.off) >= stretch.lo and not (repeated and not spec.every_hour):
            return _utc(candidate, stretch.off)
        gap_start = _naive(stretch.lo, stretch.off_before)
        if not spec.every_hour and stretch.off > stretch.off_before and candidate >= gap_start:
            return stretch.lo  # the spring-forward gap's fire, at the instant the clock resumes
        start = gap_start
        stretch = _stretch(spec.tz, stretch.lo - _EPSILON)
    raise InvalidSchedule("the schedule never fires")


def every_hour(schedule: str, tz: str = "UTC") -> bool:
    """Whether the schedule follows real time through DST changes (its hour field is ``*``)."""
    return _spec(schedule, tz).every_hour
