"""Cron schedules: validation messages, time zones and daylight saving time, on explicit
datetimes (no clock, no bus)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from broker import cron
from broker.errors import InvalidSchedule

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fires(schedule: str, tz: str, after: datetime, count: int) -> list[datetime]:
    result = []
    for _ in range(count):
        after = cron.next_fire(schedule, tz, after)
        result.append(after)
    return result


# --- Daylight saving time: the documented rules --------------------------------------------------
def test_daily_0230_on_spring_forward_fires_once_when_the_clock_resumes() -> None:
    """2024-03-31 in Berlin: 02:00 CET jumps to 03:00 CEST, there is no 02:30 that day. The
    fire happens at 03:00 CEST (01:00 UTC); the days around it fire at 02:30 local."""
    got = fires("30 2 * * *", BERLIN, utc(2024, 3, 29, 12), 4)
    assert got == [
        utc(2024, 3, 30, 1, 30),  # 02:30 CET
        utc(2024, 3, 31, 1, 0),  # 03:00 CEST: the first instant after the gap
        utc(2024, 4, 1, 0, 30),  # 02:30 CEST
        utc(2024, 4, 2, 0, 30),
    ]
    assert got[1].astimezone(ZoneInfo(BERLIN)).strftime("%H:%M %Z") == "03:00 CEST"


def test_daily_0230_on_fall_back_fires_once_at_the_first_occurrence() -> None:
    """2024-10-27 in Berlin: 02:00-02:59 happens twice (CEST, then CET). Only the first 02:30
    (CEST, 00:30 UTC) fires; the repeated 02:30 CET (01:30 UTC) does not."""
    got = fires("30 2 * * *", BERLIN, utc(2024, 10, 25, 12), 4)
    assert got == [
        utc(2024, 10, 26, 0, 30),  # 02:30 CEST
        utc(2024, 10, 27, 0, 30),  # 02:30 CEST, first pass; 01:30 UTC is not there
        utc(2024, 10, 28, 1, 30),  # 02:30 CET
        utc(2024, 10, 29, 1, 30),
    ]
    assert utc(2024, 10, 27, 1, 30) not in got


def test_times_inside_the_gap_collapse_into_one_fire() -> None:
    got = fires("*/15 2 * * *", BERLIN, utc(2024, 3, 30, 23), 2)
    assert got == [utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 0)]


def test_a_fixed_hour_schedule_fires_only_in_the_first_pass_of_a_repeated_hour() -> None:
    got = fires("*/20 2 * * *", BERLIN, utc(2024, 10, 26, 23), 4)
    assert got == [
        utc(2024, 10, 27, 0, 0),
        utc(2024, 10, 27, 0, 20),
        utc(2024, 10, 27, 0, 40),
        utc(2024, 10, 28, 1, 0),  # next day; nothing during the repeated 02:xx CET
    ]


def test_every_hour_schedules_follow_real_time_through_both_changes() -> None:
    spring = fires("30 * * * *", BERLIN, utc(2024, 3, 31, 0), 3)
    assert spring == [utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 30), utc(2024, 3, 31, 2, 30)]
    autumn = fires("*/30 * * * *", BERLIN, utc(2024, 10, 26, 23, 50), 5)
    assert autumn == [  # 02:00 CEST, 02:30 CEST, 02:00 CET, 02:30 CET, 03:00 CET
        utc(2024, 10, 27, 0, 0),
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 1, 0),
        utc(2024, 10, 27, 1, 30),
        utc(2024, 10, 27, 2, 0),
    ]


def test_seconds_schedule_across_new_york_spring_forward() -> None:
    got = fires("* * * * * */20", "America/New_York", utc(2024, 3, 10, 6, 59, 30), 3)
    assert got == [utc(2024, 3, 10, 6, 59, 40), utc(2024, 3, 10, 7, 0), utc(2024, 3, 10, 7, 0, 20)]
    local = [g.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M:%S") for g in got]
    assert local == ["01:59:40", "03:00:00", "03:00:20"]


def test_southern_hemisphere_and_half_hour_zones() -> None:
    # Sydney falls back on 2024-04-07 (03:00 AEDT -> 02:00 AEST): 02:30 fires once, in AEDT.
    got = fires("30 2 * * *", "Australia/Sydney", utc(2024, 4, 5, 12), 3)
    assert got == [utc(2024, 4, 5, 15, 30), utc(2024, 4, 6, 15, 30), utc(2024, 4, 7, 16, 30)]
    # Lord Howe moves by 30 minutes (02:00 -> 02:30 on 2024-10-06): 02:15 does not exist.
    got = fires("15 2 * * *", "Australia/Lord_Howe", utc(2024, 10, 4, 12), 2)
    assert got[0] == utc(2024, 10, 4, 15, 45)  # 02:15 +10:30
    assert got[1].astimezone(ZoneInfo("Australia/Lord_Howe")).strftime("%H:%M") == "02:30"


def test_previous_fire_mirrors_next_fire_across_transitions() -> None:
    for schedule in ("30 2 * * *", "*/15 2 * * *", "*/30 * * * *", "0 3 * * *"):
        for start in (utc(2024, 3, 30, 20), utc(2024, 10, 26, 20)):
            forward = fires(schedule, BERLIN, start, 6)
            backward = []
            cursor = forward[-1] + timedelta(microseconds=1)
            for _ in range(6):
                cursor = cron.prev_fire(schedule, BERLIN, cursor)
                backward.append(cursor)
            assert backward[::-1] == forward, schedule


def test_utc_agrees_with_croniter() -> None:
    rng = random.Random(7)
    schedules = ["*/7 * * * *", "5 4 * * 1-5", "0 0 1,15 * *", "* * * * * */13", "0 12 * 2 mon"]
    for schedule in schedules:
        for _ in range(20):
            start = utc(2024, 1, 1) + timedelta(seconds=rng.randrange(3 * 365 * 86400))
            expected = croniter(schedule, start).get_next(datetime)
            assert cron.next_fire(schedule, "UTC", start) == expected


def test_fires_between_and_its_newest_limit() -> None:
    start, end = utc(2024, 5, 1, 12, 0, 0), utc(2024, 5, 1, 12, 0, 10)
    every_second = cron.fires_between("* * * * * *", "UTC", start, end)
    assert every_second == [start + timedelta(seconds=s) for s in range(1, 11)]
    assert cron.fires_between("* * * * * *", "UTC", start, end, limit=3) == every_second[-3:]
    assert cron.fires_between("0 0 1 1 *", "UTC", start, end) == []


def test_fractional_after_and_naive_datetimes() -> None:
    assert cron.next_fire(
        "* * * * * *", "UTC", utc(2024, 1, 1, 0, 0, 0).replace(microsecond=5)
    ) == (utc(2024, 1, 1, 0, 0, 1))
    with pytest.raises(ValueError, match="time zone"):
        cron.next_fire("* * * * *", "UTC", datetime(2024, 1, 1))


# --- Validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "tz", "expected"),
    [
        ("* * * *", "UTC", "it has 4 fields"),
        ("* * * * * * *", "UTC", "it has 7 fields"),
        ("", "UTC", "empty"),
        ("61 * * * *", "UTC", "the minute field '61'"),
        ("* 24 * * *", "UTC", "the hour field '24'"),
        ("* * 32 * *", "UTC", "the day-of-month field '32'"),
        ("* * * 13 *", "UTC", "the month field '13'"),
        ("* * * * 8", "UTC", "the day-of-week field '8'"),
        ("* * * * * 60", "UTC", "the second field '60'"),
        ("*/0 * * * *", "UTC", "step"),
        ("every monday", "UTC", "2 fields"),
        ("a b c d e", "UTC", "the minute field 'a'"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("* * * * *", "Mars/Olympus", "Unknown time zone 'Mars/Olympus'"),
        ("* * * * *", "", "Invalid time zone"),
    ],
)
def test_bad_schedules_name_the_problem_with_an_example(
    schedule: str, tz: str, expected: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        cron.validate(schedule, tz)
    message = str(caught.value)
    assert expected in message
    assert "e.g." in message or "Example" in message or "such as" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "schedule",
    [
        "* * * * *",
        "*/5 * * * *",
        "0 2 * * 1-5",
        "0 0 1,15 jan,jul sun",
        "* * * * * */10",
        "0 0 L * *",
    ],
)
def test_good_schedules_pass(schedule: str) -> None:
    cron.validate(schedule, "Europe/Berlin")
    assert cron.next_fire(schedule, "Europe/Berlin", utc(2024, 1, 1)) > utc(2024, 1, 1)
