"""Run now, kill, pause, resume and logs for the selected task: shared by the Tasks list and
the task detail screen. Kill asks first (Cancel focused); ``check_action`` greys out what
does not apply (nothing to kill, a run-once task cannot pause)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType

from broker.models import TaskRecord
from broker.status import TaskKind
from broker.text import printable
from console.screens.confirm import ConfirmScreen

if TYPE_CHECKING:
    from console.screens.base import ConsoleScreen

    _Base = ConsoleScreen
else:
    _Base = object

TASK_BINDINGS: list[BindingType] = [
    Binding("r", "run_now", "Run now", id="run-now"),
    Binding("k", "kill", "Kill", id="kill"),
    Binding("p", "pause", "Pause", id="pause"),
    Binding("p", "resume", "Resume", id="resume"),
    Binding("l", "logs", "Logs", id="logs"),
]
TASK_ACTIONS = frozenset({"run_now", "kill", "pause", "resume", "logs"})


class TaskActions(_Base):
    BINDINGS: ClassVar[list[BindingType]] = []

    def selected_task(self) -> TaskRecord | None:
        raise NotImplementedError

    def logs_target(self) -> tuple[str, str] | None:
        """(task key, run id) whose logs ``l`` opens."""
        task = self.selected_task()
        if task is None:
            return None
        newest = self.ctx.state.summary(task.key).newest
        return (task.key, newest.run_id) if newest is not None else None

    def task_action_state(self, action: str) -> bool | None:
        """True: available; None: shown greyed out; False: hidden (its twin shows instead)."""
        task = self.selected_task()
        if task is None:
            return False if action == "resume" else None
        if action == "logs":
            return True if self.logs_target() is not None else None
        if action == "run_now":
            return None if task.killed else True
        if action == "kill":  # nothing to stop once killed or finished
            return True if self.ctx.state.is_active(task.key) else None
        pausable = task.kind is not TaskKind.RUN_ONCE and not task.killed
        if action == "pause":
            if task.paused and pausable:
                return False
            return True if pausable else None
        if action == "resume":
            return True if (task.paused and pausable) else False
        return True

    def action_signature(self) -> tuple[bool | None, ...]:
        return tuple(self.task_action_state(a) for a in sorted(TASK_ACTIONS))

    def action_run_now(self) -> None:
        task = self.selected_task()
        if task is not None:
            self.act(self.ctx.feed.run_now(task), done=f"Run requested for {task.name}")

    def action_kill(self) -> None:
        task = self.selected_task()
        if task is None:
            return
        body = Text()
        body.append("Kill ")
        body.append(printable(task.name), style="bold")
        body.append(f" ({task.kind.label})?\n\n")
        body.append(
            "Its schedule stops for good and a running run is terminated "
            "(SIGTERM, then SIGKILL). This cannot be undone."
        )

        def decided(confirmed: bool | None) -> None:
            if confirmed:
                self.act(self.ctx.feed.kill(task), done=f"Kill requested for {task.name}")

        self.app.push_screen(ConfirmScreen("Kill task?", body, "Kill task"), decided)

    def action_pause(self) -> None:
        task = self.selected_task()
        if task is not None:
            self.act(self.ctx.feed.pause(task), done=f"Paused {task.name}")

    def action_resume(self) -> None:
        task = self.selected_task()
        if task is not None:
            self.act(self.ctx.feed.resume(task), done=f"Resumed {task.name}")

    def action_logs(self) -> None:
        target = self.logs_target()
        if target is not None:
            from console.screens.run_logs import RunLogsScreen

            self.app.push_screen(RunLogsScreen(*target))
