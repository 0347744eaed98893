"""Every run of every task, newest first (``:runs failed``); enter opens its logs.

With 100,000 runs the default order is kept incrementally: new runs are inserted by their
creation time as they arrive, so a redraw does not re-sort them all.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType

from broker import names
from broker.models import RunRecord
from console.cells import RUN_STYLES, cell
from console.format import DASH, clock_time, duration, short_id
from console.screens.listing import ListScreen
from console.widgets.record_table import Column, RecordTable

DEFAULT_SORT = ("created", True)


class RunsScreen(ListScreen):
    VIEW = "Runs"
    WATCHES = ("runs", "tasks")
    NOUN = "runs"
    EMPTY = "No runs yet."
    COLUMNS: ClassVar[list[Column]] = [
        Column("task", "Task", min_width=14),
        Column("run", "Run", 9),
        Column("status", "Status", 10),
        Column("attempt", "Try", 3, justify="right"),
        Column("executor", "Executor", 14),
        Column("created", "Created", 19),
        Column("duration", "Duration", 9, justify="right"),
        Column("exit", "Exit", 4, justify="right"),
        Column("reason", "Reason", min_width=10),
    ]
    FIELDS = ("task", "run", "status", "executor", "reason", "exit", "task_id")
    ALIASES: ClassVar[dict[str, dict[str, str]]] = {
        "status": {"failed": "failure", "started": "running"}
    }
    DEFAULT_SORT = DEFAULT_SORT
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "logs", "Logs", id="logs"),
        Binding("d", "task", "Task", id="task"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._order: list[tuple[float, str]] = []  # (created, key), oldest first
        self._arrivals = 0
        self._generation = -1
        self._newest: list[str] = []
        self._newest_marker: tuple[int, int, int] = (-1, -1, 0)

    def _record(self, key: str) -> RunRecord | None:
        task_key, _, run_id = key.rpartition(".")
        return self.ctx.state.run(task_key, run_id)

    def all_keys(self) -> Iterable[str]:
        return (k for _, k in reversed(self._chronological()))

    def _chronological(self) -> list[tuple[float, str]]:
        state = self.ctx.state
        if self._generation != state.run_generation:
            self._generation = state.run_generation
            self._order = []
            self._arrivals = 0
        arrivals = state.run_arrivals
        new = arrivals[self._arrivals :]
        self._arrivals = len(arrivals)
        if len(new) > 1000:
            self._order.extend(new)
            self._order.sort()
        else:
            for entry in new:
                insort(self._order, entry)
        return self._order

    def ordered_keys(self) -> list[str]:
        default_order = self.sort_column == "created" and self.sort_reverse
        if default_order and not self.query_.active and self.ctx.state.workspace is None:
            # The default order, kept incrementally; the list is rebuilt only when runs
            # arrived or went (a deleted run's key is dropped then).
            state = self.ctx.state
            marker = (state.run_generation, len(state.run_arrivals), state.run_removals)
            if marker != self._newest_marker:
                order = self._chronological()
                if state.run_removals != self._newest_marker[2]:
                    self._order = order = [e for e in order if self._record(e[1]) is not None]
                self._newest = [k for _, k in reversed(order)]
                self._newest_marker = marker
            self.total = len(self._newest)
            return self._newest
        return super().ordered_keys()

    def row_token(self, key: str) -> Hashable:
        return self._record(key)

    def in_workspace(self, key: str) -> bool:
        """A run's key starts with its workspace (``names.run_key``)."""
        label = key.partition(".")[0]
        return self.ctx.state.in_workspace("" if label == names.DEFAULT_WORKSPACE else label)

    def fields(self, key: str) -> dict[str, str]:
        run = self._record(key)
        if run is None:
            return {}
        return {
            "task": self.ctx.state.task_name(run.task_key),
            "run": run.run_id,
            "status": str(run.status),
            "executor": run.executor,
            "reason": self.ctx.state.run_reason(run),
            "exit": "" if run.exit_code is None else str(run.exit_code),
            "task_id": run.task_id,
        }

    def sort_value(self, key: str, column: str) -> Any:
        run = self._record(key)
        if run is None:
            return ""
        if column == "created":
            return run.created_at.timestamp()
        if column == "duration":
            if run.started_at is None:
                return 0.0
            end = run.finished_at or self.ctx.clock.now()
            return (end - run.started_at).total_seconds()
        if column in ("attempt", "exit"):
            value = run.attempt if column == "attempt" else run.exit_code
            return value if value is not None else -1
        return self.filter_values(key)[0].get(column, "")

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        run = self._record(key)
        if run is None:
            return [cell(key)], "muted"
        now = self.ctx.clock.now()
        cells = [
            cell(self.ctx.state.task_name(run.task_key)),
            cell(short_id(run.run_id)),
            cell(run.status),
            cell(run.attempt),
            cell(run.executor or DASH),
            cell(clock_time(run.created_at, self.ctx.clock.local)),
            cell(duration(run.started_at, run.finished_at, now)),
            cell(DASH if run.exit_code is None else run.exit_code),
            cell(self.ctx.state.run_reason(run) or DASH),
        ]
        return cells, RUN_STYLES.get(run.status, "")

    def _open_logs(self, key: str | None) -> None:
        from console.screens.run_logs import RunLogsScreen

        run = self._record(key) if key else None
        if run is not None:
            self.app.push_screen(RunLogsScreen(run.task_key, run.run_id))

    def on_record_table_selected(self, event: RecordTable.Selected) -> None:
        self._open_logs(event.key)

    def action_logs(self) -> None:
        self._open_logs(self.table.cursor_key)

    def action_task(self) -> None:
        from console.screens.task_detail import TaskDetailScreen

        run = self._record(self.table.cursor_key or "")
        if run is not None and run.task_key in self.ctx.state.tasks:
            self.app.push_screen(TaskDetailScreen(run.task_key))
