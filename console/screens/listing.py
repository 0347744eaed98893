"""A screen built around one table: filter, sort, a summary line, and a cached row model.

Subclasses say which keys exist (``all_keys``), what each row holds for filtering
(``fields``), how a column sorts (``sort_value``) and how a row looks (``render_row``).
Filtering and sorting run over plain values; only visible rows are rendered.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Input, Static

from broker.text import printable
from console import query
from console.format import count
from console.screens.base import ConsoleScreen
from console.widgets.filter_bar import FilterBar
from console.widgets.record_table import Column, RecordTable


class ListScreen(ConsoleScreen):
    COLUMNS: ClassVar[list[Column]] = []
    FIELDS: ClassVar[tuple[str, ...]] = ()
    ALIASES: ClassVar[dict[str, dict[str, str]]] = {}
    DEFAULT_SORT: ClassVar[tuple[str, bool]] = ("name", False)
    NOUN: ClassVar[str] = "rows"
    EMPTY: ClassVar[str] = "Nothing here yet."

    DEFAULT_CSS = """
    ListScreen #summary { height: 1; padding: 0 1; color: $text-muted; background: $panel; }
    ListScreen #summary.-error { color: $error; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", id="filter"),
        Binding("escape", "clear_filter", "Clear filter", id="clear-filter"),
        Binding("o", "sort_next", "Sort", id="sort"),
        Binding("O", "sort_reverse", "Reverse sort", show=False, id="sort-reverse"),
        # Off the key bar (it is full at 140 columns); ``?`` and the palette list it, and the
        # header shows the workspace chosen.
        Binding("w", "next_workspace", "Switch workspace", show=False, id="workspace"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_ = query.Query(fields=self.FIELDS)
        self.sort_column, self.sort_reverse = self.DEFAULT_SORT
        self._rows: dict[str, tuple[Hashable, dict[str, str], str]] = {}
        self.table = RecordTable(self.COLUMNS, self.render_row, empty_text=self.EMPTY, id="table")
        self.table.sort_column, self.table.sort_reverse = self.DEFAULT_SORT
        self.shown = 0
        self.total = 0

    def compose_body(self) -> Iterable[Widget]:
        yield self.table
        yield from self.compose_extra()
        yield Static(id="summary", markup=False)
        yield FilterBar(id="filter")

    def compose_extra(self) -> Iterable[Widget]:
        return ()

    def on_mount(self) -> None:
        super().on_mount()
        self.table.focus()

    # --- the row model (subclasses) -----------------------------------------------------
    def all_keys(self) -> Iterable[str]:
        return ()

    def row_token(self, key: str) -> Hashable:
        """Changes whenever ``fields(key)`` would: cached filter values are reused until then."""
        return None

    def fields(self, key: str) -> dict[str, str]:
        return {}

    def sort_value(self, key: str, column: str) -> Any:
        return self.filter_values(key)[0].get(column, "")

    def in_workspace(self, key: str) -> bool:
        """Whether the row shows under the workspace chosen (``state.workspace`` is not None;
        rows that belong to no workspace, such as executors, always show)."""
        return True

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        return [], ""

    # --- filter and sort ----------------------------------------------------------------
    def filter_values(self, key: str) -> tuple[dict[str, str], str]:
        token = self.row_token(key)
        cached = self._rows.get(key)
        if cached is not None and cached[0] == token:
            return cached[1], cached[2]
        values = self.fields(key)
        haystack = " ".join(values.values()).lower()
        self._rows[key] = (token, values, haystack)
        return values, haystack

    def ordered_keys(self) -> list[str]:
        keys = list(self.all_keys())
        if self.ctx.state.workspace is not None:
            keys = [k for k in keys if self.in_workspace(k)]
        self.total = len(keys)
        q = self.query_
        if q.active:
            keys = [k for k in keys if q.matches(*self.filter_values(k))]
        column = self.sort_column
        keys.sort(key=lambda k: (self.sort_value(k, column), k), reverse=self.sort_reverse)
        return keys

    def empty_message(self) -> str:
        """What an empty table says: nothing exists yet, or the filter hides everything."""
        workspace = self.ctx.state.workspace
        if not self.total and workspace is not None:
            return f"No {self.NOUN} in workspace {workspace!r} (w switches, :ws shows all)."
        if not self.total or not self.query_.active:
            return self.EMPTY
        noun = self.NOUN.removesuffix("s")
        return f"No {noun} matches the filter {self.query_.text.strip()!r} (esc clears it)."

    def sync(self) -> None:
        keys = self.ordered_keys()
        self.shown = len(keys)
        if not keys:
            self.table.empty_text = self.empty_message()
        self.table.set_keys(keys)
        self._update_summary()
        self.after_sync()

    def tick(self) -> None:
        # Rows and order are unchanged: repaint the visible rows for their ages.
        self.table.refresh()

    def after_sync(self) -> None:
        """Hook: bindings and detail panes that depend on the highlighted row."""

    def _update_summary(self) -> None:
        parts = [f"{count(self.shown)} of {count(self.total)} {self.NOUN}"]
        if self.ctx.state.workspace is not None:
            parts[0] += f" in workspace {self.ctx.state.workspace}"
        if self.query_.active:
            parts.append(f"filter: {self.query_.text}")
        label = next((c.label for c in self.COLUMNS if c.key == self.sort_column), "")
        parts.append(f"sorted by {label.lower()} {'▼' if self.sort_reverse else '▲'}")
        if self.query_.error:
            parts.append(self.query_.error)
        self.query_one("#summary").set_class(bool(self.query_.error), "-error")
        self.show("#summary", Text(printable("  ·  ".join(parts))), fixed=True)

    def set_filter(self, text: str) -> None:
        had_filter = bool(self.query_.text)
        self.query_ = query.parse(text, self.FIELDS, self.ALIASES)
        self.redraw()
        if had_filter != bool(text):
            self.refresh_bindings()  # "Clear filter" comes or goes

    # --- actions ------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":
            return self.query_.active or bool(self.query_.text)
        return True

    def action_filter(self) -> None:
        self.query_one(FilterBar).open(self.query_.text)

    def action_next_workspace(self) -> None:
        """All workspaces → each one in turn → all again."""
        state = self.ctx.state
        order: list[str | None] = [None, *state.known_workspaces()]
        at = order.index(state.workspace) if state.workspace in order else 0
        state.set_workspace(order[(at + 1) % len(order)])

    def action_clear_filter(self) -> None:
        self.set_filter("")

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, FilterBar):
            self.set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, FilterBar):
            event.input.close()
            self.table.focus()

    def on_filter_bar_cancelled(self, event: FilterBar.Cancelled) -> None:
        bar = self.query_one(FilterBar)
        bar.close()
        self.set_filter("")
        self.table.focus()

    def set_sort(self, column: str, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column, self.sort_reverse = column, reverse
        self.table.sort_column, self.table.sort_reverse = column, reverse
        self.redraw()

    def action_sort_next(self) -> None:
        keys = [c.key for c in self.COLUMNS]
        index = keys.index(self.sort_column) if self.sort_column in keys else -1
        self.set_sort(keys[(index + 1) % len(keys)], self.sort_reverse)

    def action_sort_reverse(self) -> None:
        self.set_sort(self.sort_column, not self.sort_reverse)

    def on_record_table_sort_requested(self, event: RecordTable.SortRequested) -> None:
        self.set_sort(event.column)
