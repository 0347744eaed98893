"""The Tasks view: every task with its derived status, last run, schedule and countdown."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import BindingType

from broker.models import RunRecord, TaskRecord
from broker.status import TaskKind, TaskStatus
from console.cells import RUN_STYLES, TASK_STYLES, cell, yes_no
from console.format import DASH, age, countdown
from console.screens.listing import ListScreen
from console.screens.task_actions import TASK_ACTIONS, TASK_BINDINGS, TaskActions
from console.state import workspace_name
from console.widgets.record_table import Column, RecordTable

NEVER = 0.0
FAR = float("inf")


def last_moment(run: RunRecord | None) -> datetime | None:
    if run is None:
        return None
    return run.finished_at or run.started_at or run.created_at


def row_style(status: TaskStatus, newest: RunRecord | None) -> str:
    """A started task (an armed schedule) takes the colour of its newest run."""
    if status is TaskStatus.STARTED:
        return RUN_STYLES.get(newest.status, "") if newest is not None else ""
    return TASK_STYLES.get(status, "")


class TasksScreen(TaskActions, ListScreen):
    VIEW = "Tasks"
    WATCHES = ("tasks", "runs", "orchestrations")
    NOUN = "tasks"
    EMPTY = "No tasks yet. Upload an orchestration (3, then u) and run it from the SDK or CLI."
    COLUMNS: ClassVar[list[Column]] = [
        Column("name", "Name", min_width=16),
        Column("type", "Type", 14),
        Column("status", "Status", 12),
        Column("last", "Last run", 20),
        Column("schedule", "Schedule", 15),
        Column("next", "Next run", 10),
        Column("active", "Active", 6),
        Column("workspace", "Workspace", 12),
        Column("updated", "Updated", 11),
    ]
    FIELDS = (
        "name",
        "type",
        "status",
        "last",
        "schedule",
        "active",
        "id",
        "orchestration",
        "orch_id",
        "workspace",
    )
    ALIASES: ClassVar[dict[str, dict[str, str]]] = {
        "status": {"failure": "failed", "running": "started"},
        "last": {"failed": "failure", "started": "running"},
    }
    DEFAULT_SORT = ("updated", True)
    BINDINGS: ClassVar[list[BindingType]] = TASK_BINDINGS

    def __init__(self) -> None:
        super().__init__()
        self._signature: tuple[object, ...] = ()

    def empty_message(self) -> str:
        # Enter on an orchestration lists its tasks (the filter ``orch_id=<id>``).
        terms = self.query_.terms
        if len(terms) == 1 and terms[0].field == "orch_id" and terms[0].exact:
            term = terms[0]
            if not term.negate and len(term.values) == 1:
                name = self.ctx.state.orchestration_name(term.values[0])
                return f"Orchestration {name!r} has no tasks yet (esc shows every task)."
        return super().empty_message()

    # --- row model ----------------------------------------------------------------------
    def all_keys(self) -> Iterable[str]:
        return self.ctx.state.tasks.keys()

    def row_token(self, key: str) -> Hashable:
        state = self.ctx.state
        summary = state.summary(key)
        return (state.tasks.get(key), summary.status, summary.newest)

    def fields(self, key: str) -> dict[str, str]:
        state = self.ctx.state
        task = state.tasks[key]
        newest = state.summary(key).newest
        return {
            "name": task.name,
            "type": task.kind.label,
            "status": str(state.status_of(key)),
            "last": str(newest.status) if newest is not None else "",
            "schedule": task.schedule,
            "active": yes_no(state.is_active(key)),
            "id": task.id,
            "orchestration": state.orchestration_name(task.orchestration_key),
            "orch_id": task.orchestration_id,
            "workspace": workspace_name(task.workspace),
        }

    def in_workspace(self, key: str) -> bool:
        return self.ctx.state.in_workspace(self.ctx.state.tasks[key].workspace)

    def next_fire(self, task: TaskRecord) -> datetime | None:
        if task.kind is not TaskKind.SCHEDULED or task.paused or task.killed:
            return None
        ctx = self.ctx
        return ctx.fires.next_fire(task.key, task.schedule, task.tz, ctx.clock.now())

    def sort_value(self, key: str, column: str) -> Any:
        state = self.ctx.state
        task = state.tasks[key]
        if column == "name":
            return task.name.lower()
        if column == "updated":
            return task.updated_at.timestamp()
        if column == "last":
            moment = last_moment(state.summary(key).newest)
            return moment.timestamp() if moment is not None else NEVER
        if column == "next":
            fire = self.next_fire(task)
            return fire.timestamp() if fire is not None else FAR
        if column == "active":
            return state.is_active(key)
        return self.filter_values(key)[0].get(column, "")

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        state = self.ctx.state
        task = state.tasks.get(key)
        if task is None:
            return [cell(key)], "muted"
        now = self.ctx.clock.now()
        summary = state.summary(key)
        newest = summary.newest
        last = f"{newest.status} {age(last_moment(newest), now)}" if newest else DASH
        cells = [
            cell(task.name),
            cell(task.kind.label),
            cell(summary.status),
            cell(last),
            cell(task.schedule or DASH),
            cell(countdown(self.next_fire(task), now)),
            cell(yes_no(state.is_active(key))),
            cell(workspace_name(task.workspace)),
            cell(age(task.updated_at, now)),
        ]
        return cells, row_style(summary.status, newest)

    # --- selection and actions ----------------------------------------------------------
    def selected_task(self) -> TaskRecord | None:
        key = self.table.cursor_key
        return self.ctx.state.tasks.get(key) if key is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in TASK_ACTIONS:
            return self.task_action_state(action)
        return super().check_action(action, parameters)

    def after_sync(self) -> None:
        signature = self.action_signature()  # the footer changes only when these do
        if signature != self._signature:
            self._signature = signature
            self.refresh_bindings()

    def on_record_table_cursor_moved(self, event: RecordTable.CursorMoved) -> None:
        self.after_sync()

    def on_record_table_selected(self, event: RecordTable.Selected) -> None:
        from console.screens.task_detail import TaskDetailScreen

        if event.key in self.ctx.state.tasks:
            self.app.push_screen(TaskDetailScreen(event.key))
