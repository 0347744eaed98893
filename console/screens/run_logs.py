"""One run's logs: history then the live tail, with follow, wrap, time zone, stream filter and
search. The ``N new lines`` marker appears when you scroll up while lines keep coming.

The last hop of the console's side of the trace "a print() reaching the console and the SDK"
(listed in ``executor.logstream``): ``console.logtail`` fills a ``console.logdoc`` document
that ``console.widgets.log_view`` draws.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Input, Static

from broker.status import RUN_TERMINAL
from broker.text import printable
from console.format import DASH, SEP, clock_time, count, duration, short_id
from console.logdoc import LogDocument
from console.logtail import LogTail
from console.screens.base import ConsoleScreen
from console.widgets.log_view import LogView

INFO_REFRESH_S = 0.25
STREAM_CYCLE: list[tuple[frozenset[str] | None, str]] = [
    (None, "all streams"),
    (frozenset({"stdout", "taskbus"}), "stdout"),
    (frozenset({"stderr", "taskbus"}), "stderr"),
]


class SearchBar(Input):
    DEFAULT_CSS = """
    SearchBar { display: none; height: 1; border: none; padding: 0 1; background: $boost; }
    SearchBar:focus { border: none; }
    SearchBar.-shown { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Cancel")]

    def action_close(self) -> None:
        self.remove_class("-shown")
        self.screen.query_one(LogView).focus()


class RunLogsScreen(ConsoleScreen):
    VIEW = "Logs"
    WATCHES = ("runs",)
    DEFAULT_CSS = """
    RunLogsScreen #info { height: 1; padding: 0 1; background: $boost; }
    RunLogsScreen #marker {
        dock: bottom; width: auto; height: 1; margin: 0 2 1 0; padding: 0 1;
        offset-x: 0; background: $warning; color: $background; text-style: bold;
        display: none; layer: overlay;
    }
    RunLogsScreen #marker.-shown { display: block; }
    RunLogsScreen { layers: base overlay; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back"),
        Binding("end", "follow", "Follow", id="follow"),
        Binding("G", "follow", "Follow", show=False),
        Binding("w", "wrap", "Wrap", id="wrap"),
        Binding("t", "timestamps", "Times", id="timestamps"),
        Binding("z", "utc", "UTC/local", id="utc"),
        Binding("s", "streams", "Streams", id="streams"),
        Binding("slash", "search", "Search", id="search"),
        Binding("n", "find(True)", "Next", id="next-match"),
        Binding("N", "find(False)", "Previous", id="previous-match"),
    ]

    def __init__(self, task_key: str, run_id: str) -> None:
        super().__init__()
        self.task_key = task_key  # TaskRecord.key
        self.run_id = run_id
        self.doc = LogDocument()
        self.stream_index = 0
        self.tail: LogTail | None = None
        self.view = LogView(self.doc, zone=UTC, id="log")  # the app's zone is set on mount
        self._signature: tuple[object, ...] = ()

    def view_name(self) -> str:
        task = printable(self.ctx.state.task_name(self.task_key))
        return SEP.join(("Logs", task, short_id(self.run_id)))

    def compose_body(self) -> Iterable[Widget]:
        yield Static(id="info")
        yield self.view
        yield Static(id="marker")
        yield SearchBar(placeholder="search (enter to find, n/N next/previous)", id="search")

    def on_mount(self) -> None:
        self.view.local_zone = self.ctx.clock.local
        super().on_mount()
        self.set_interval(INFO_REFRESH_S, self._on_info_timer)
        self.view.focus()
        self.open_tail()

    @work(group="tail")
    async def open_tail(self) -> None:
        self.tail = await self.ctx.feed.open_log(self.task_key, self.run_id, self.doc)

    async def on_unmount(self) -> None:
        if self.tail is not None:
            await self.ctx.feed.close_log(self.tail)

    # --- drawing ------------------------------------------------------------------------
    def data_version(self) -> int:
        # The info line and the marker also show what the log view holds.
        view = self.view
        shown = (
            view.lines_map.count,
            view.unseen,
            view.follow,
            view.current,
            view.search.term if view.search is not None else None,
            view.wrap,
            view.utc,
            self.stream_index,
        )
        return super().data_version() + hash(shown)

    def _on_info_timer(self) -> None:
        # Line counts, follow state and the new-lines marker change with every batch.
        if self._visible():
            self.redraw()

    def sync(self) -> None:
        self._update_info()
        self._update_marker()
        signature = (self.view.follow, self.view.search is not None)
        if signature != self._signature:
            self._signature = signature
            self.refresh_bindings()

    def _update_marker(self) -> None:
        marker = self.query_one("#marker", Static)
        view = self.view
        show = not view.follow and view.unseen > 0
        if show:
            self.show("#marker", Text(f"↓ {count(view.unseen)} new lines — End to follow"))
        marker.set_class(show, "-shown")

    def _update_info(self) -> None:
        run = self.ctx.state.run(self.task_key, self.run_id)
        if run is not None and run.status in RUN_TERMINAL and self.tail and self.tail.caught_up:
            self.view.empty_text = "This run wrote no log lines."
        now = self.ctx.clock.now()
        view = self.view
        dim = Style(dim=True)
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(printable(self.ctx.state.task_name(self.task_key)), style="bold")
        text.append(f"  {short_id(self.run_id)}  ")
        if run is None:
            text.append("run record not found", style="italic")
        else:
            text.append(str(run.status), style="bold")
            text.append(f"  try {run.attempt}  ", dim)
            text.append(printable(run.executor) or DASH)
            text.append("  ")
            text.append(clock_time(run.started_at, self.ctx.clock.local, date=False))
            text.append(f" +{duration(run.started_at, run.finished_at, now)}")
            if run.status in RUN_TERMINAL and run.exit_code is not None:
                text.append(f"  exit {run.exit_code}")
            if run.reason:
                text.append("  ")
                text.append(printable(run.reason))
        text.append(f"  │ {count(view.lines_map.count)} lines", dim)
        if view.search is not None:
            found = view.search.index_of(view.current) if view.current is not None else 0
            text.append("  /")
            text.append(view.search.term, style="bold")
            text.append(f"/ {found}/{count(len(view.search.matches))}")
        text.append(f"  {'follow' if view.follow else 'paused'}", dim)
        text.append(f" · {STREAM_CYCLE[self.stream_index][1]}", dim)
        text.append(f" · {'UTC' if view.utc else 'local'}", dim)
        if view.wrap:
            text.append(" · wrap", dim)
        self.show("#info", text, fixed=True)

    # --- actions ------------------------------------------------------------------------
    def action_back(self) -> None:
        if self.view.search is not None:
            self.view.set_search("")
            self.sync()
            return
        self.app.pop_screen()

    def action_follow(self) -> None:
        self.view.resume_follow()
        self.sync()

    def action_wrap(self) -> None:
        self.view.set_options(wrap=not self.view.wrap)
        self.sync()

    def action_timestamps(self) -> None:
        self.view.set_options(timestamps=not self.view.timestamps)
        self.sync()

    def action_utc(self) -> None:
        self.view.set_options(utc=not self.view.utc)
        self.sync()

    def action_streams(self) -> None:
        self.stream_index = (self.stream_index + 1) % len(STREAM_CYCLE)
        self.view.set_options(streams=STREAM_CYCLE[self.stream_index][0])
        self.sync()

    def action_search(self) -> None:
        bar = self.query_one(SearchBar)
        bar.add_class("-shown")
        bar.value = self.view.search.term if self.view.search is not None else ""
        bar.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not isinstance(event.input, SearchBar):
            return
        event.stop()
        event.input.remove_class("-shown")
        self.view.focus()
        found = self.view.set_search(event.value.strip())
        if found:
            self.view.find(forward=True)
        elif event.value.strip():
            self.notify(f"No line contains {printable(repr(event.value.strip()))}", markup=False)
        self.sync()

    def action_find(self, forward: bool) -> None:
        if self.view.find(forward=forward) is None and self.view.search is not None:
            self.notify("No matches", markup=False)
        self.sync()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "find":
            return self.view.search is not None  # hidden until there is a search
        if action == "follow":
            return None if self.view.follow else True
        return True
