"""A table that renders only the rows on screen (Textual's line API).

``DataTable`` costs grow with its rows (an update or a first paint touches every row, so
10,000 rows make each update slow and 100,000 a long wait for the first paint). This table
holds only an ordered list of row keys; each visible row is
rendered on demand by the screen's ``render_row`` callback, so 10,000 tasks or 100,000 runs
cost the same to draw as 40. Updates never clear anything: ``set_keys`` swaps the order and
keeps the cursor on the same key at the same place on screen; ``refresh()`` repaints the
visible rows only.

Rows are coloured by a style name (``ok``, ``bad``, ``warn``, ``live``, ``muted``) mapped to
theme variables in CSS. Every cell is a ``rich.text.Text``: user strings are never markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

ROW_STYLES = ("ok", "bad", "warn", "live", "muted")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int = 0  # cells; 0 shares what the fixed columns leave
    justify: Literal["left", "right"] = "left"
    min_width: int = 10  # for shared columns


RowRenderer = Callable[[str], tuple[Sequence[Text], str]]


class RecordTable(ScrollView, can_focus=True, inherit_bindings=False):
    DEFAULT_CSS = """
    RecordTable {
        height: 1fr;
        background: $surface;
        scrollbar-gutter: stable;
        overflow-x: hidden;
    }
    RecordTable > .record-table--header { color: $text; background: $panel; text-style: bold; }
    RecordTable > .record-table--sorted { color: $accent; }
    RecordTable > .record-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground; text-style: bold;
    }
    RecordTable > .record-table--cursor-blurred { background: $block-cursor-blurred-background; }
    RecordTable > .record-table--ok { color: $success; }
    RecordTable > .record-table--bad { color: $error; }
    RecordTable > .record-table--warn { color: $warning; }
    RecordTable > .record-table--live { color: $primary-lighten-2; }
    RecordTable > .record-table--muted { color: $text-muted; }
    RecordTable > .record-table--empty { color: $text-muted; text-style: italic; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "record-table--header",
        "record-table--sorted",
        "record-table--cursor",
        "record-table--cursor-blurred",
        "record-table--empty",
        *(f"record-table--{name}" for name in ROW_STYLES),
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
        Binding("enter", "select", "Open", id="open"),
    ]

    class Selected(Message):
        """A row was chosen (enter or double click)."""

        def __init__(self, table: RecordTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> RecordTable:
            return self.table

    class CursorMoved(Message):
        """The highlighted row changed (actions that depend on it may change)."""

        def __init__(self, table: RecordTable, key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

    class SortRequested(Message):
        """A column header was clicked."""

        def __init__(self, table: RecordTable, column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column

    def __init__(
        self,
        columns: Sequence[Column],
        render_row: RowRenderer,
        *,
        empty_text: str = "Nothing here yet.",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.columns = list(columns)
        self.render_row = render_row
        self.empty_text = empty_text
        self.keys: list[str] = []
        self._positions: dict[str, int] | None = None
        self.cursor = 0
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.renders = 0  # rows rendered so far (for tests and the benchmark)
        self._announced: str | None = None

    # --- data ---------------------------------------------------------------------------
    @property
    def cursor_key(self) -> str | None:
        if 0 <= self.cursor < len(self.keys):
            return self.keys[self.cursor]
        return None

    def position(self, key: str) -> int | None:
        if self._positions is None:
            self._positions = {k: i for i, k in enumerate(self.keys)}
        return self._positions.get(key)

    def set_keys(self, keys: list[str]) -> None:
        """Show ``keys`` in this order, keeping the cursor on its row and that row where it
        was on screen (or the top of the table in view, when it was)."""
        old_key = self.cursor_key
        top = round(self.scroll_y)
        offset = self.cursor - top
        if keys is not self.keys:
            self.keys = keys
            self._positions = None
        position = self.position(old_key) if old_key is not None else None
        if position is None:
            position = min(self.cursor, max(0, len(keys) - 1))
        self.cursor = position
        self.virtual_size = Size(self.size.width, len(keys) + 1)
        if top and 0 <= offset < self._body_height:
            target = min(max(0, self.cursor - offset), self._max_scroll(len(keys)))
            self.scroll_to(y=target, animate=False, force=True)
        self._scroll_cursor_into_view()
        self.refresh()
        self._announce()

    def _announce(self) -> None:
        key = self.cursor_key
        if key != self._announced:
            self._announced = key
            self.post_message(self.CursorMoved(self, key))

    def select_key(self, key: str) -> bool:
        position = self.position(key)
        if position is None:
            return False
        self._move(position)
        return True

    # --- geometry -----------------------------------------------------------------------
    @property
    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _max_scroll(self, rows: int) -> int:
        return max(0, rows + 1 - self.scrollable_content_region.height)

    def _widths(self, total: int) -> list[int]:
        gaps = len(self.columns) + 1
        fixed = sum(c.width for c in self.columns if c.width)
        flex = [c for c in self.columns if not c.width]
        left = max(0, total - fixed - gaps)
        share = left // len(flex) if flex else 0
        widths = []
        for column in self.columns:
            if column.width:
                widths.append(column.width)
            else:
                widths.append(max(column.min_width, share))
        return widths

    def _column_at(self, x: int) -> str | None:
        position = 1
        widths = self._widths(self.scrollable_content_region.width)
        for column, width in zip(self.columns, widths, strict=True):
            if position <= x < position + width + 1:
                return column.key
            position += width + 1
        return None

    # --- rendering ----------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header(width)
        row = round(self.scroll_y) + y - 1
        if not self.keys:
            if y == 1:
                style = self.get_component_rich_style("record-table--empty")
                return self._strip(Text(" " + self.empty_text, style=style), width, self.rich_style)
            return Strip.blank(width, self.rich_style)
        if row >= len(self.keys):
            return Strip.blank(width, self.rich_style)
        self.renders += 1
        cells, style_name = self.render_row(self.keys[row])
        line = self._join(cells, width)
        base = self.rich_style
        if style_name:
            base = base + self.get_component_rich_style(f"record-table--{style_name}")
        if row == self.cursor:
            cursor = "record-table--cursor" if self.has_focus else "record-table--cursor-blurred"
            line.stylize(self.get_component_rich_style(cursor))
        return self._strip(line, width, base)

    def _header(self, width: int) -> Strip:
        labels = []
        for column in self.columns:
            label = column.label
            if column.key == self.sort_column:
                label += " ▼" if self.sort_reverse else " ▲"
            style = Style()
            if column.key == self.sort_column:
                sorted_style = self.get_component_rich_style("record-table--sorted")
                style = Style(color=sorted_style.color, bold=True)
            labels.append(Text(label, style=style))
        base = self.rich_style + self.get_component_rich_style("record-table--header")
        return self._strip(self._join(labels, width), width, base)

    def _join(self, cells: Sequence[Text], width: int) -> Text:
        line = Text(" ", no_wrap=True, end="")
        for column, size, cell in zip(self.columns, self._widths(width), cells, strict=False):
            piece = cell.copy()
            piece.no_wrap = True
            piece.truncate(size, overflow="ellipsis", pad=False)
            if column.justify == "right":
                line.append(" " * (size - piece.cell_len))
                line.append_text(piece)
            else:
                line.append_text(piece)
                line.append(" " * (size - piece.cell_len))
            line.append(" ")
        return line

    def _strip(self, line: Text, width: int, base: Style) -> Strip:
        segments = list(line.render(self.app.console))
        return Strip(segments).adjust_cell_length(width, base).apply_style(base)

    # --- actions ------------------------------------------------------------------------
    def _move(self, index: int) -> None:
        if not self.keys:
            return
        index = max(0, min(len(self.keys) - 1, index))
        if index != self.cursor:
            # Repaint the two rows that changed; a scroll repaints everything by itself.
            self._refresh_row(self.cursor)
            self.cursor = index
            self._refresh_row(index)
        self._scroll_cursor_into_view()
        self._announce()

    def _refresh_row(self, index: int) -> None:
        y = index - round(self.scroll_y) + 1
        if 1 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def _scroll_cursor_into_view(self) -> None:
        top = round(self.scroll_y)
        body = self._body_height
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, force=True)
        elif self.cursor >= top + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False, force=True)

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(1, self._body_height - 1))

    def action_first(self) -> None:
        self._move(0)

    def action_last(self) -> None:
        self._move(len(self.keys) - 1)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            column = self._column_at(event.x)
            if column is not None:
                self.post_message(self.SortRequested(self, column))
            return
        row = round(self.scroll_y) + event.y - 1
        if 0 <= row < len(self.keys):
            self._move(row)
            if event.chain >= 2:
                self.action_select()

    def on_focus(self, event: events.Focus) -> None:
        self.refresh()

    def on_blur(self, event: events.Blur) -> None:
        self.refresh()
