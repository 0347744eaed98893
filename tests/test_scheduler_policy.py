"""The scheduler's pure decisions: missed-fire policies, continuous back-off, the timetable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from broker.models import RunRecord, TaskRecord
from broker.scheduler import policy
from broker.scheduler.policy import Action
from broker.scheduler.timetable import Timetable
from broker.status import MissedPolicy, RunStatus, TaskKind

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def task(**changes: object) -> TaskRecord:
    base = TaskRecord(
        id="t",
        name="t",
        orchestration_id="o",
        kind=TaskKind.SCHEDULED,
        schedule="* * * * * *",
        created_at=T0,
        updated_at=T0,
    )
    return msgspec.structs.replace(base, **changes)


def actions(steps: list[policy.Step]) -> list[tuple[int, str]]:
    return [(int((s.instant - T0).total_seconds()), s.action.value) for s in steps]


def test_on_time_fire_runs_under_every_policy() -> None:
    for missed in MissedPolicy:
        steps = policy.plan(task(missed=missed), [T0], now=T0 + seconds(0.01), on_time_s=2)
        assert actions(steps) == [(0, "fire")], missed


def test_latest_runs_the_newest_within_the_deadline_and_records_the_rest() -> None:
    due = [T0 + seconds(s) for s in range(5)]
    now = T0 + seconds(30)  # the newest is late, but within the 300 s deadline
    steps = policy.plan(task(), due, now=now, on_time_s=2)
    assert actions(steps) == [
        (0, "missed"),
        (1, "missed"),
        (2, "missed"),
        (3, "missed"),
        (4, "fire"),
    ]
    assert all(s.reason == "missed" for s in steps if s.action is Action.MISSED)
    too_late = policy.plan(task(starting_deadline_s=10), due, now=now, on_time_s=2)
    assert [a for _, a in actions(too_late)] == ["missed"] * 5


def test_skip_runs_only_an_on_time_instant() -> None:
    due = [T0 + seconds(s) for s in range(5)]
    late = policy.plan(task(missed=MissedPolicy.SKIP), due, now=T0 + seconds(30), on_time_s=2)
    assert [a for _, a in actions(late)] == ["missed"] * 5
    fresh = policy.plan(task(missed=MissedPolicy.SKIP), due, now=T0 + seconds(4.5), on_time_s=2)
    assert [a for _, a in actions(fresh)] == ["missed"] * 4 + ["fire"]


def test_all_catches_up_at_most_missed_cap_within_the_deadline() -> None:
    due = [T0 + seconds(s) for s in range(0, 100, 10)]  # 0, 10, ..., 90
    now = T0 + seconds(91)
    steps = policy.plan(
        task(missed=MissedPolicy.ALL, missed_cap=3, starting_deadline_s=60),
        due,
        now=now,
        on_time_s=2,
    )
    # 90 is on time; 80, 70, 60 are the newest 3 late ones (all within 60 s); older ones missed.
    assert actions(steps) == [
        (0, "missed"),
        (10, "missed"),
        (20, "missed"),
        (30, "missed"),
        (40, "missed"),
        (50, "missed"),
        (60, "fire"),
        (70, "fire"),
        (80, "fire"),
        (90, "fire"),
    ]


def test_a_long_downtime_is_summarised_in_one_record() -> None:
    due = [T0 + seconds(1000), T0 + seconds(1001)]
    steps = policy.plan(
        task(), due, now=T0 + seconds(1001.5), on_time_s=2, dropped=(T0, T0 + seconds(999))
    )
    assert steps[0].action is Action.MISSED and steps[0].instant == T0
    assert steps[0].reason.startswith("missed (every fire from 2024-06-01T12:00:00+00:00 to")
    assert actions(steps[1:]) == [(1000, "missed"), (1001, "fire")]


def run(n: int, status: RunStatus, ran_s: float = 0.1) -> RunRecord:
    start = T0 + seconds(10 * n)
    return RunRecord(
        task_id="t",
        run_id=f"r{n}",
        status=status,
        created_at=start,
        started_at=start,
        finished_at=start + seconds(ran_s),
    )


def test_continuous_back_off_doubles_caps_and_resets() -> None:
    def delay(*runs: RunRecord) -> float:
        newest_first = sorted(runs, key=lambda r: r.created_at, reverse=True)
        return policy.continuous_delay_s(
            newest_first, backoff_min_s=1, backoff_max_s=300, healthy_run_s=60
        )

    fail, ok = RunStatus.FAILURE, RunStatus.SUCCESS
    assert delay() == 0
    assert delay(run(1, ok)) == 0
    assert delay(run(1, fail)) == 1
    assert delay(run(1, fail), run(2, RunStatus.TIMED_OUT)) == 2
    assert delay(*(run(n, fail) for n in range(3))) == 4
    assert delay(*(run(n, fail) for n in range(12))) == 300  # capped
    assert delay(run(1, fail), run(2, fail), run(3, ok), run(4, fail)) == 1  # reset by success
    assert delay(run(1, fail), run(2, fail), run(3, fail, ran_s=120)) == 1  # a healthy long run


def test_chain_ids_are_deterministic_and_distinct() -> None:
    first = policy.chain_run_id("t", None)
    assert first == policy.chain_run_id("t", None)
    second = policy.chain_run_id("t", first)
    assert second == policy.chain_run_id("t", first)
    assert len({first, second, policy.chain_run_id("u", None)}) == 3


def test_timetable_orders_rearms_and_disarms() -> None:
    table = Timetable()
    assert table.arm("a", T0 + seconds(5)) is True
    assert table.arm("b", T0 + seconds(3)) is True
    assert table.arm("c", T0 + seconds(9)) is False  # not the earliest: no wake-up needed
    table.arm("a", T0 + seconds(1))  # re-armed earlier: the old entry is stale
    table.disarm("b")
    assert table.earliest() == T0 + seconds(1)
    assert table.pop_due(T0 + seconds(6)) == [("a", T0 + seconds(1))]
    assert len(table) == 1
    assert table.pop_due(T0 + seconds(9)) == [("c", T0 + seconds(9))]
    assert table.earliest() is None
    for n in range(1000):  # churn: stale entries are compacted away
        table.arm("x", T0 + seconds(n))
    assert len(table._heap) < 200


def test_a_quickly_ended_continuous_run_is_restarted_a_minimum_interval_after_its_start() -> None:
    quick = run(1, RunStatus.SUCCESS, ran_s=0.05)
    assert policy.continuous_ready_at([quick], 0.0, 1.0) == T0 + seconds(11)  # started + 1 s
    slow = run(1, RunStatus.SUCCESS, ran_s=5)
    assert policy.continuous_ready_at([slow], 0.0, 1.0) == T0 + seconds(15)  # at its end
    failed = run(1, RunStatus.FAILURE, ran_s=0.05)
    assert policy.continuous_ready_at([failed], 4.0, 1.0) == T0 + seconds(14.05)  # back-off
    never_started = RunRecord(task_id="t", run_id="r", status=RunStatus.KILLED, created_at=T0)
    assert policy.continuous_ready_at([never_started], 0.0, 1.0) == T0 + seconds(1)
