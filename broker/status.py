"""Status enums, their named sets, and the one place a task's status is derived.

Statuses are strings on the wire and in the public API (they are the Wallaroo SDK's strings),
so every enum is a ``StrEnum``: ``status in RUN_TERMINAL`` reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.models import RunRecord, TaskRecord


class OrchestrationStatus(StrEnum):
    PENDING_PACKAGING = "pending_packaging"
    PACKAGING = "packaging"
    READY = "ready"
    ERROR = "error"


ORCHESTRATION_SETTLED = frozenset({OrchestrationStatus.READY, OrchestrationStatus.ERROR})


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    SKIPPED = "skipped"  # a scheduled instant that was not run (its reason: missed, overlap)


# SKIPPED is terminal (nothing more happens to the record) but not a failure: nothing ran.
RUN_TERMINAL = frozenset(
    {
        RunStatus.SUCCESS,
        RunStatus.FAILURE,
        RunStatus.TIMED_OUT,
        RunStatus.KILLED,
        RunStatus.SKIPPED,
    }
)
RUN_ACTIVE = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
# The ends of an attempt that a task's ``retries`` retry; a killed run is never retried.
RUN_RETRIED = frozenset({RunStatus.FAILURE, RunStatus.TIMED_OUT})


class TaskStatus(StrEnum):
    PENDING = "pending"
    STARTED = "started"
    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    PAUSED = "paused"
    PENDING_KILL = "pending_kill"
    KILLED = "killed"


TASK_TERMINAL = frozenset(
    {TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.KILLED}
)


class TaskKind(StrEnum):
    RUN_ONCE = "run_once"
    SCHEDULED = "run_scheduled"
    CONTINUOUS = "run_continuously"

    @property
    def label(self) -> str:
        """The type string users see (the reference SDK's words)."""
        return _KIND_LABELS[self]


_KIND_LABELS = {
    TaskKind.RUN_ONCE: "Temporary Run",
    TaskKind.SCHEDULED: "Scheduled Run",
    TaskKind.CONTINUOUS: "Continuous Run",
}


class Overlap(StrEnum):
    ALLOW = "allow"
    FORBID = "forbid"
    REPLACE = "replace"


class MissedPolicy(StrEnum):
    LATEST = "latest"
    SKIP = "skip"
    ALL = "all"


_RUN_TO_TASK = {
    RunStatus.PENDING: TaskStatus.PENDING,
    RunStatus.RUNNING: TaskStatus.STARTED,
    RunStatus.SUCCESS: TaskStatus.SUCCESS,
    RunStatus.FAILURE: TaskStatus.FAILED,
    RunStatus.TIMED_OUT: TaskStatus.TIMED_OUT,
    RunStatus.KILLED: TaskStatus.KILLED,
    # Only a scheduled instant is skipped, and a scheduled task's status never comes from its
    # runs; listed so that the mapping is total.
    RunStatus.SKIPPED: TaskStatus.KILLED,
}


def will_retry(task: TaskRecord, run: RunRecord) -> bool:
    """Does another attempt follow this ended run? It failed or timed out after it started
    (a run refused before it started, e.g. its orchestration failed packaging, is not retried),
    its task is not killed, and it has attempts left: ``attempt`` counts every attempt,
    ``1 + retries`` at most."""
    return (
        run.status in RUN_RETRIED
        and run.started_at is not None
        and not task.killed
        and run.attempt < 1 + task.retries
    )


def task_status(task: TaskRecord, runs: Iterable[RunRecord]) -> TaskStatus:
    """Derive a task's status from its record and its runs; it is never stored.

    A killed task is ``pending_kill`` until none of its runs is pending or running. A run-once
    task takes the status of its newest run; scheduled and continuous tasks are ``started``
    while armed.
    """
    runs = list(runs)
    if task.killed:
        if any(run.status in RUN_ACTIVE for run in runs):
            return TaskStatus.PENDING_KILL
        return TaskStatus.KILLED
    if task.paused:
        return TaskStatus.PAUSED
    if task.kind is not TaskKind.RUN_ONCE:
        return TaskStatus.STARTED
    if not runs:
        return TaskStatus.PENDING
    newest = max(runs, key=lambda run: run.created_at)
    if will_retry(task, newest):  # its retry is being enqueued: the task goes on
        return TaskStatus.STARTED
    return _RUN_TO_TASK[newest.status]
