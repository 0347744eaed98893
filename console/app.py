"""The Taskbus console: a Textual app over a live ``ConsoleState``.

Top-level views are Textual modes (each keeps its own screen stack: a task's detail and a
run's logs stack on the view they were opened from). The feed runs as a worker on the app's
own loop; a 4 Hz timer here only decides whether the "no server" screen should show.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import ModalScreen, Screen
from textual.worker import Worker, WorkerState

from broker.settings import ConnectSettings
from broker.text import printable
from console import commands
from console.clock import Clock
from console.context import Context
from console.feed import Feed
from console.screens.base import CommandRequested, ConsoleScreen
from console.screens.command_line import CommandLineScreen
from console.screens.connections import ConnectionsScreen
from console.screens.executors import ExecutorsScreen
from console.screens.help import HelpScreen
from console.screens.listing import ListScreen
from console.screens.orchestrations import OrchestrationsScreen
from console.screens.runs import RunsScreen
from console.screens.server_down import ServerDownScreen
from console.screens.tasks import TasksScreen
from console.screens.upload import UploadScreen
from console.state import COLLECTIONS, ConsoleState, Link

LINK_CHECK_S = 0.25
VIEW_LABELS = {
    "tasks": "Tasks",
    "runs": "Runs",
    "orchestrations": "Orchestrations",
    "executors": "Executors",
    "connections": "Connections",
}


class ConsoleCommands(Provider):
    """The command palette: every action of the screen underneath, plus views and commands."""

    def _entries(self) -> Iterable[tuple[str, str, Callable[[], object]]]:
        app = self.app
        assert isinstance(app, TaskbusApp)
        for mode, label in VIEW_LABELS.items():
            yield f"View: {label}", f":{mode}", partial(app.run_command, mode)
        yield "Upload an orchestration", ":upload", partial(app.run_command, "upload")
        yield "Workspace: all", ":workspace", partial(app.run_command, "workspace")
        for name in app.state.known_workspaces():
            yield f"Workspace: {name}", f":workspace {name}", partial(app.set_workspace, name)
        yield "Help: keys and commands", "?", app.action_help
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not active.enabled or not binding.description or binding.description in seen:
                continue
            seen.add(binding.description)
            node = active.node
            callback = partial(app.call_later, app.run_action, binding.action, node)
            yield f"{binding.description}", f"key {app.get_key_display(binding)}", callback

    async def discover(self) -> Hits:
        for name, help_text, callback in self._entries():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class TaskbusApp(App[None]):
    TITLE = "Taskbus"
    CSS_PATH = "console.tcss"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "tasks": TasksScreen,
        "runs": RunsScreen,
        "orchestrations": OrchestrationsScreen,
        "executors": ExecutorsScreen,
        "connections": ConnectionsScreen,
    }
    DEFAULT_MODE = "tasks"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "view('tasks')", "Tasks", id="view-tasks"),
        Binding("2", "view('runs')", "Runs", id="view-runs"),
        Binding("3", "view('orchestrations')", "Orchs", id="view-orchestrations"),
        Binding("4", "view('executors')", "Executors", id="view-executors"),
        Binding("5", "view('connections')", "Connections", show=False, id="view-connections"),
        Binding("colon", "command_line", "Command", id="command"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
        # `taskbus up` runs the console in the foreground and ctrl+c stops it all: quit at
        # once, from every screen and dialog (priority: inputs would take it as "copy").
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="interrupt"),
    ]

    def __init__(
        self,
        settings: ConnectSettings,
        *,
        clock: Clock | None = None,
        retry_s: float | None = None,
        freeze_gc: bool = True,
    ) -> None:
        """``freeze_gc``: after the first full load, exempt it from garbage collection
        (process-wide; tests that run many apps in one process turn it off)."""
        super().__init__()
        state = ConsoleState(settings.urls)
        feed = Feed(settings, state) if retry_s is None else Feed(settings, state, retry_s=retry_s)
        self.ctx = Context(state=state, feed=feed, clock=clock or Clock())
        self.feed_worker: Worker[None] | None = None
        self._frozen = not freeze_gc
        state.on_change = self._state_changed

    @property
    def state(self) -> ConsoleState:
        return self.ctx.state

    def on_mount(self) -> None:
        self.feed_worker = self.run_worker(
            self.ctx.feed.run(), name="feed", group="feed", exit_on_error=False
        )
        self.set_interval(LINK_CHECK_S, self.check_link)
        self.check_link()

    def _state_changed(self) -> None:
        stack = self.screen_stack
        if not stack:
            return
        top = stack[-1]
        if not isinstance(top, ConsoleScreen) and isinstance(top, ModalScreen) and len(stack) > 1:
            top = stack[-2]
        if isinstance(top, ConsoleScreen):
            top.poke()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self.feed_worker and event.state is WorkerState.ERROR:
            error = event.worker.error
            self.notify(
                printable(f"The connection to NATS failed: {error}"), severity="error", markup=False
            )

    def check_link(self) -> None:
        """Show the "no server" screen until a first connection succeeds; once the first
        full load is in, move it out of the garbage collector's way."""
        if not self._frozen and set(COLLECTIONS) <= self.state.loaded:
            # 100,000 runs are long-lived: without this every full collection walks them
            # all (110-150 ms pauses measured during a log burst).
            self._frozen = True
            gc.freeze()
        stack = self.screen_stack
        if not stack:
            return  # shutting down: the stacks are being emptied
        showing = isinstance(stack[-1], ServerDownScreen)
        down = self.state.link is Link.DOWN and not self.state.ever_connected
        if down and not showing:
            self.push_screen(ServerDownScreen())
        elif showing and not down:
            self.pop_screen()

    def on_command_requested(self, event: CommandRequested) -> None:
        self.run_command(event.text)

    # --- actions ------------------------------------------------------------------------
    async def action_view(self, mode: str) -> None:
        await self._show_view(mode, None, keep_filter=True)

    def action_command_line(self) -> None:
        def done(text: str | None) -> None:
            if text:
                self.run_command(text)

        self.push_screen(CommandLineScreen(), done)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def run_command(self, text: str) -> None:
        """Run a ``:`` command (``tasks failed``, ``runs``, ``executors``, ``theme dracula``)."""
        resolved = commands.resolve(text)
        if resolved is None:
            self.notify(
                f"Unknown command {text!r}: try :tasks, :runs, :orchestrations, :executors, "
                f":connections, :workspace, :upload, :theme, :help, :quit",
                severity="warning",
                markup=False,
            )
            return
        command, arg = resolved
        if command.name in commands.VIEWS:
            self.run_worker(self._show_view(command.name, commands.filter_for(arg)))
        elif command.name == "workspace":
            self.set_workspace(arg or None)
        elif command.name == "upload":
            self.run_worker(self._upload())
        elif command.name == "theme":
            if arg in self.available_themes:
                self.theme = arg
            else:
                names = ", ".join(sorted(self.available_themes))
                self.notify(f"Unknown theme {arg!r}; themes: {names}", markup=False)
        elif command.name == "help":
            self.action_help()
        elif command.name == "quit":
            self.exit()

    def set_workspace(self, name: str | None) -> None:
        """Narrow every view to workspace ``name`` (None: show all of them)."""
        known = self.state.known_workspaces()
        if name is not None and name not in known:
            self.notify(
                printable(f"No workspace named {name!r}; workspaces: {', '.join(known)}"),
                severity="warning",
                markup=False,
            )
            return
        self.state.set_workspace(name)

    async def _show_view(
        self, mode: str, filter_text: str | None, *, keep_filter: bool = False
    ) -> None:
        """Land on the top-level list of ``mode``: a mode keeps its own stack, so the task
        detail or logs opened from it earlier are closed first. ``:tasks`` sets (or clears)
        the filter; the number keys keep it."""
        await self.switch_mode(mode)
        while len(self.screen_stack) > 1 and not isinstance(self.screen, ListScreen):
            await self.pop_screen()
        screen = self.screen
        if keep_filter or not isinstance(screen, ListScreen):
            return
        if filter_text or screen.query_.text:
            screen.set_filter(filter_text or "")

    async def _upload(self) -> None:
        await self.switch_mode("orchestrations")
        screen = self.screen
        if isinstance(screen, OrchestrationsScreen):
            screen.action_upload()
        else:
            self.push_screen(UploadScreen())
