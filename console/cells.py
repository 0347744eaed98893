"""Status words and their row colours, shared by every table (style names of RecordTable)."""

from __future__ import annotations

from rich.text import Text

from broker.status import OrchestrationStatus, RunStatus, TaskStatus
from broker.text import printable
from console.state import ExecutorHealth

TASK_STYLES = {
    TaskStatus.SUCCESS: "ok",
    TaskStatus.FAILED: "bad",
    TaskStatus.TIMED_OUT: "bad",
    TaskStatus.STARTED: "live",
    TaskStatus.PENDING: "",
    TaskStatus.PAUSED: "warn",
    TaskStatus.PENDING_KILL: "warn",
    TaskStatus.KILLED: "muted",
}
RUN_STYLES = {
    RunStatus.SUCCESS: "ok",
    RunStatus.FAILURE: "bad",
    RunStatus.TIMED_OUT: "bad",
    RunStatus.RUNNING: "live",
    RunStatus.PENDING: "",
    RunStatus.KILLED: "muted",
    RunStatus.SKIPPED: "muted",  # an instant not run (missed, overlap): nothing went wrong
}
ORCHESTRATION_STYLES = {
    OrchestrationStatus.READY: "ok",
    OrchestrationStatus.ERROR: "bad",
    OrchestrationStatus.PACKAGING: "live",
    OrchestrationStatus.PENDING_PACKAGING: "warn",
}
EXECUTOR_STYLES = {
    ExecutorHealth.ALIVE: "",
    ExecutorHealth.STALE: "warn",
    ExecutorHealth.LOST: "bad",
}


def cell(value: object) -> Text:
    """A table cell from any value, never parsed as markup, control characters escaped."""
    return Text(printable(str(value)), no_wrap=True, end="")


def yes_no(value: bool) -> str:
    return "yes" if value else "no"
