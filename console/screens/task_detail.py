"""One task: its spec and its run history (newest first), with run now / kill / pause / logs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from broker.models import RunRecord, TaskRecord
from broker.status import RunStatus, TaskKind
from broker.text import printable
from console.cells import RUN_STYLES, cell
from console.format import DASH, SEP, clock_time, count, duration, short_id, short_sha, span
from console.schedule import next_fires
from console.screens.base import ConsoleScreen
from console.screens.task_actions import TASK_ACTIONS, TASK_BINDINGS, TaskActions
from console.widgets.record_table import Column, RecordTable

NEXT_FIRES = 3


class TaskDetailScreen(TaskActions, ConsoleScreen):
    VIEW = "Task"
    DEFAULT_CSS = """
    TaskDetailScreen #spec { height: auto; max-height: 12; padding: 0 1; background: $boost; }
    TaskDetailScreen #runs-summary {
        height: 1; padding: 0 1; color: $text-muted; background: $panel;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="back"),
        *TASK_BINDINGS,
    ]
    COLUMNS: ClassVar[list[Column]] = [
        Column("run", "Run", 9),
        Column("status", "Status", 10),
        Column("attempt", "Attempt", 7, justify="right"),
        Column("executor", "Executor", 16),
        Column("started", "Started", 19),
        Column("duration", "Duration", 9, justify="right"),
        Column("exit", "Exit", 5, justify="right"),
        Column("reason", "Reason", min_width=10),
    ]

    def __init__(self, task_key: str) -> None:
        super().__init__()
        self.task_key = task_key  # TaskRecord.key
        self.runs: dict[str, RunRecord] = {}
        self.table = RecordTable(
            self.COLUMNS, self.render_row, empty_text="No runs yet.", id="runs"
        )
        self._signature: tuple[object, ...] = ()

    def view_name(self) -> str:
        return SEP.join(("Tasks", printable(self.ctx.state.task_name(self.task_key))))

    def compose_body(self) -> Iterable[Widget]:
        yield Static(id="spec")
        yield self.table
        yield Static(id="runs-summary")

    def on_mount(self) -> None:
        super().on_mount()
        self.table.focus()

    def data_version(self) -> int:
        state = self.ctx.state
        return state.task_version(self.task_key) + state.version_of("orchestrations", "link")

    # --- drawing ------------------------------------------------------------------------
    def sync(self) -> None:
        state = self.ctx.state
        runs = state.runs_of(self.task_key)
        self.runs = {run.run_id: run for run in runs}
        self.table.set_keys([run.run_id for run in runs])
        task = state.tasks.get(self.task_key)
        self.show("#spec", self.spec(task))
        active = sum(1 for run in runs if run.status is RunStatus.RUNNING)
        self.show(
            "#runs-summary",
            Text(f"{count(len(runs))} runs, newest first · {active} running · enter: logs"),
            fixed=True,
        )
        self.after_sync()

    def spec(self, task: TaskRecord | None) -> Text:
        label = Style(dim=True)
        text = Text(no_wrap=False, overflow="fold")
        if task is None:
            gone = self.task_key.partition(".")[2]
            text.append(f"Task {gone} is gone (deleted).", style="italic")
            return text
        state = self.ctx.state
        now = self.ctx.clock.now()
        zone = self.ctx.clock.local
        text.append(printable(task.name), style="bold")
        text.append(f"   {task.kind.label} · {state.status_of(task.key)}")
        text.append(f" · {'active' if state.is_active(task.key) else 'inactive'}\n")
        orch = state.orchestrations.get(task.orchestration_key)
        text.append("id ", label)
        text.append(printable(task.id))
        text.append("   orchestration ", label)
        if orch is not None:
            text.append(printable(orch.name))
            text.append(f" ({orch.status}, sha {short_sha(orch.sha)})")
        else:
            text.append(printable(task.orchestration_id))
        text.append("\n")
        if task.kind is TaskKind.SCHEDULED:
            text.append("schedule ", label)
            text.append(printable(f"{task.schedule} ({task.tz})"))
            fires = (
                []
                if task.paused or task.killed
                else next_fires(task.schedule, task.tz, now, NEXT_FIRES)
            )
            text.append("   next ", label)
            text.append(", ".join(clock_time(f, zone) for f in fires) or DASH)
            text.append("\n")
        text.append("timeout ", label)
        text.append(span(task.timeout_s) if task.timeout_s else "none")
        text.append("   overlap ", label)
        text.append(printable(task.overlap))
        text.append("   missed ", label)
        text.append(printable(task.missed))
        text.append("   retries ", label)
        text.append(str(task.retries))
        text.append("   pool ", label)
        text.append(printable(task.pool))
        flags = [name for name, on in (("paused", task.paused), ("killed", task.killed)) if on]
        if flags:
            text.append("   flags ", label)
            text.append(", ".join(flags), style="bold")
        text.append("\nargs ", label)
        args = json.dumps(task.json_args, sort_keys=True) if task.json_args else "{}"
        text.append(printable(args))
        text.append("\ncreated ", label)
        text.append(clock_time(task.created_at, zone))
        text.append("   updated ", label)
        text.append(clock_time(task.updated_at, zone))
        return text

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        run = self.runs.get(key)
        if run is None:
            return [cell(key)], "muted"
        now = self.ctx.clock.now()
        zone = self.ctx.clock.local
        cells = [
            cell(short_id(run.run_id)),
            cell(run.status),
            cell(run.attempt),
            cell(run.executor or DASH),
            cell(clock_time(run.started_at, zone)),
            cell(duration(run.started_at, run.finished_at, now)),
            cell(DASH if run.exit_code is None else run.exit_code),
            cell(self.ctx.state.run_reason(run) or DASH),
        ]
        return cells, RUN_STYLES.get(run.status, "")

    # --- actions ------------------------------------------------------------------------
    def selected_task(self) -> TaskRecord | None:
        return self.ctx.state.tasks.get(self.task_key)

    def logs_target(self) -> tuple[str, str] | None:
        key = self.table.cursor_key
        if key is not None and key in self.runs:
            return self.task_key, key
        return super().logs_target()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in TASK_ACTIONS:
            return self.task_action_state(action)
        return True

    def after_sync(self) -> None:
        signature = self.action_signature()
        if signature != self._signature:
            self._signature = signature
            self.refresh_bindings()

    def on_record_table_selected(self, event: RecordTable.Selected) -> None:
        from console.screens.run_logs import RunLogsScreen

        self.app.push_screen(RunLogsScreen(self.task_key, event.key))
