"""What to do with due instants: pure decisions, no clock and no bus.

Missed fires (after downtime, or a scheduler that fell behind) follow the task's policy:

* ``latest`` (default): the newest due instant runs if it is on time or within the task's
  ``starting_deadline_s``; every older one is recorded ``missed``.
* ``skip``: only an on-time instant runs; every late one is recorded ``missed``.
* ``all``: every on-time instant runs, plus the newest ``missed_cap`` late ones within the
  starting deadline (oldest first); the rest are recorded ``missed``.

"On time" means picked up at most ``on_time_s`` after the instant. Every instant that does not
run is visible in the task's history: one record each for the newest ``missed_records_cap``
of them, and one record summarising any older ones.

Continuous tasks start a new run when the previous one ends, after a back-off that doubles with
each consecutive failure (``backoff_min_s`` → ``backoff_max_s``); a successful run, or one that
ran at least ``healthy_run_s``, resets it. Successive runs start at least ``min_interval_s``
apart, so a task that exits at once does not run in a hot loop. The next run's id is derived
from the previous run's id, so two schedulers create it once.

next: ``broker.scheduler.firing`` (the plan's steps carried out on the bus).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from broker.backoff import Backoff
from broker.models import RunRecord, TaskRecord
from broker.status import MissedPolicy, RunStatus

MISSED = "missed"
OVERLAP = "overlap"

_CHAIN_NAMESPACE = uuid.UUID("0c6f9a52-7e0b-4a51-8d3e-5b2a1f4c9d87")


class Action(StrEnum):
    FIRE = "fire"
    MISSED = "missed"


@dataclass(frozen=True, slots=True)
class Step:
    instant: datetime
    action: Action
    reason: str = ""


def plan(
    task: TaskRecord,
    due: Sequence[datetime],
    *,
    now: datetime,
    on_time_s: float,
    dropped: tuple[datetime, datetime] | None = None,
) -> list[Step]:
    """Steps for the due instants ``due`` (oldest first); ``dropped`` is the range of older
    due instants that were not listed one by one (they get one summary record)."""
    on_time = timedelta(seconds=on_time_s)
    deadline = timedelta(seconds=task.starting_deadline_s)
    fire: set[datetime] = set()
    if due:
        newest = due[-1]
        if task.missed is MissedPolicy.ALL:
            fire = {t for t in due if now - t <= on_time}
            late = [t for t in due if on_time < now - t <= deadline]
            fire.update(late[-task.missed_cap :] if task.missed_cap > 0 else [])
        elif task.missed is MissedPolicy.SKIP:
            fire = {newest} if now - newest <= on_time else set()
        else:
            fire = {newest} if now - newest <= max(on_time, deadline) else set()
    steps: list[Step] = []
    if dropped is not None:
        first, last = dropped
        reason = f"{MISSED} (every fire from {first.isoformat()} to {last.isoformat()})"
        steps.append(Step(first, Action.MISSED, reason))
    for instant in due:
        if instant in fire:
            steps.append(Step(instant, Action.FIRE))
        else:
            steps.append(Step(instant, Action.MISSED, MISSED))
    return steps


def chain_run_id(task_id: str, previous_run_id: str | None) -> str:
    """The id of a continuous task's next run: the same in every scheduler."""
    link = f"{task_id}.first" if previous_run_id is None else f"{task_id}.after.{previous_run_id}"
    return str(uuid.uuid5(_CHAIN_NAMESPACE, link))


def continuous_delay_s(
    newest_first: Sequence[RunRecord],
    *,
    backoff_min_s: float,
    backoff_max_s: float,
    healthy_run_s: float,
) -> float:
    """Seconds to wait after the newest (ended) run before the next one starts."""
    failures = 0
    for run in newest_first:
        if run.status is RunStatus.SUCCESS:
            break
        failures += 1
        if run_seconds(run) >= healthy_run_s:
            break
    return Backoff(first_s=backoff_min_s, max_s=backoff_max_s).delay_s(failures)


def continuous_ready_at(
    newest_first: Sequence[RunRecord], delay_s: float, min_interval_s: float
) -> datetime:
    """When a continuous task's next run may start, after its newest (ended) run: the back-off
    after that run's end, and never sooner than ``min_interval_s`` after that run started (a
    task that exits at once is restarted at most that often, not in a hot loop)."""
    newest = newest_first[0]
    after_end = ended_at(newest) + timedelta(seconds=delay_s)
    started = newest.started_at or newest.created_at
    return max(after_end, started + timedelta(seconds=min_interval_s))


def run_seconds(run: RunRecord) -> float:
    if run.started_at is None or run.finished_at is None:
        return 0.0
    return (run.finished_at - run.started_at).total_seconds()


def ended_at(run: RunRecord) -> datetime:
    return run.finished_at or run.updated_at or run.created_at
