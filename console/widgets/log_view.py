"""A log viewer for one run: renders only visible lines, follows the tail, never freezes.

The document (``console.logdoc``) is filled by the NATS callback; this widget drains it from its
own 15 Hz timer (a repaint per line cannot keep up with a chatty task; one per tick can,
whatever the rate), so a burst costs one layout step and one repaint per tick. Rendered lines
are cached (LRU) by line number; SGR colours from user output are rendered with
``Text.from_ansi`` (never as markup), every other control character or escape sequence is shown
escaped (``\\x1b]52;…``), never sent to the terminal (``console.logdoc.clean``).

Follow: on while at the end. Scrolling up stops it and counts ``unseen`` lines; ``end``
resumes. Search highlights every match and ``n``/``N`` move between them without hiding the
lines around them.

next: ``console.screens.run_logs`` (the screen that opens the tail and holds this view).
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from broker.models import LogLine
from console.format import stamp
from console.logdoc import LogDocument, LogLayout, LogSearch, clean

PULL_HZ = 15
STAMP_WIDTH = 13  # "HH:MM:SS.mmm "
GUTTER = {"stdout": "  ", "stderr": "▌ ", "taskbus": "» "}


class LogView(ScrollView, can_focus=True, inherit_bindings=False):
    DEFAULT_CSS = """
    LogView { height: 1fr; background: $surface; }
    LogView > .log-view--stamp { color: $text-muted; }
    LogView > .log-view--stderr { color: $error; }
    LogView > .log-view--taskbus { color: $accent; text-style: italic; }
    LogView > .log-view--match { background: $warning 40%; }
    LogView > .log-view--current { background: $warning; color: $background; }
    LogView > .log-view--empty { color: $text-muted; text-style: italic; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "log-view--stamp",
        "log-view--stderr",
        "log-view--taskbus",
        "log-view--match",
        "log-view--current",
        "log-view--empty",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "scroll_lines(-1)", "Up", show=False),
        Binding("down", "scroll_lines(1)", "Down", show=False),
        Binding("pageup", "scroll_page(-1)", "Page up", show=False),
        Binding("pagedown", "scroll_page(1)", "Page down", show=False),
        Binding("home", "top", "Top", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("right", "scroll_right", "Right", show=False),
    ]

    def __init__(self, doc: LogDocument, *, zone: tzinfo, id: str | None = None) -> None:
        super().__init__(id=id)
        self.doc = doc
        self.lines_map = LogLayout(doc)
        self.local_zone = zone
        self.follow = True
        self.unseen = 0  # lines that arrived while not following
        self.wrap = False
        self.timestamps = True
        self.utc = False
        self.streams: frozenset[str] | None = None
        self.search: LogSearch | None = None
        self.current: int | None = None  # line number of the current search match
        self.empty_text = "Waiting for log lines…"
        self._cache: LRUCache[int, Strip] = LRUCache(4096)
        self._syncing = False

    def on_mount(self) -> None:
        self._configure()
        self.set_interval(1 / PULL_HZ, self.pull)

    # --- settings -----------------------------------------------------------------------
    @property
    def zone(self) -> tzinfo:
        return UTC if self.utc else self.local_zone

    @property
    def prefix_width(self) -> int:
        return (STAMP_WIDTH if self.timestamps else 0) + 2

    def set_options(
        self,
        *,
        wrap: bool | None = None,
        timestamps: bool | None = None,
        utc: bool | None = None,
        streams: frozenset[str] | bool | None = False,
    ) -> None:
        """Change how lines show (``streams=False`` leaves the filter as it is)."""
        if wrap is not None:
            self.wrap = wrap
        if timestamps is not None:
            self.timestamps = timestamps
        if utc is not None:
            self.utc = utc
        if streams is not False:
            self.streams = streams if isinstance(streams, frozenset) else None
        self._cache.clear()
        self._configure()

    def _configure(self) -> None:
        anchor = None if self.follow else self._top_line()
        text_width = self.scrollable_content_region.width - self.prefix_width
        changed = self.lines_map.configure(
            streams=self.streams,
            wrap=max(8, text_width) if self.wrap else None,
            prefix=self.prefix_width,
        )
        if changed and self.search is not None:
            self.search.rescan()
        self._sync_size(anchor)

    def on_resize(self) -> None:
        self._cache.clear()
        self._configure()

    # --- data ---------------------------------------------------------------------------
    def pull(self) -> int:
        """Drain the document's pending lines into the view; returns lines added."""
        shown_before = self.lines_map.count
        added, dropped = self.doc.drain()
        if not added and not dropped:
            return 0
        anchor = None if self.follow else self._top_line()
        self.lines_map.extend()
        if self.search is not None:
            self.search.extend()
        new_lines = max(0, self.lines_map.count - shown_before)
        if not self.follow:
            self.unseen += new_lines
        self._sync_size(anchor)
        return added

    def _sync_size(self, anchor: int | None) -> None:
        """Set the virtual size and keep the view at the end (following) or on ``anchor``."""
        # Wrapped lines never need a horizontal scroll; unwrapped ones scroll to the longest.
        content = 0 if self.wrap else self.lines_map.max_width + self.prefix_width
        self._syncing = True
        try:
            self.virtual_size = Size(content, self.lines_map.rows)
            if self.follow:
                self.scroll_to(y=self.max_scroll_y, animate=False, force=True)
            elif anchor is not None:
                self.scroll_to(y=self.lines_map.row_of(anchor), animate=False, force=True)
        finally:
            self._syncing = False
        self.refresh()

    def _top_line(self) -> int | None:
        if not self.lines_map.rows:
            return None
        row = min(round(self.scroll_y), self.lines_map.rows - 1)
        return self.lines_map.locate(row)[0]

    # --- follow -------------------------------------------------------------------------
    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._syncing:
            return
        # Scrolled up by the user; not a taller viewport (resize, wrap toggled) lowering the
        # maximum, which moves scroll_y down to it and must keep following.
        if new_value < old_value and self.follow and new_value < self.max_scroll_y:
            self.follow = False
            self.unseen = 0
        elif not self.follow and new_value >= self.max_scroll_y and new_value > old_value:
            self.resume_follow()

    def resume_follow(self) -> None:
        self.follow = True
        self.unseen = 0
        self.current = None
        self._sync_size(None)

    def stop_follow(self) -> None:
        if self.follow:
            self.follow = False
            self.unseen = 0

    def action_scroll_lines(self, delta: int) -> None:
        self.scroll_to(y=self.scroll_y + delta, animate=False, force=True)

    def action_scroll_page(self, direction: int) -> None:
        step = max(1, self.scrollable_content_region.height - 1)
        self.scroll_to(y=self.scroll_y + direction * step, animate=False, force=True)

    def action_top(self) -> None:
        self.scroll_to(y=0, animate=False, force=True)

    # --- search -------------------------------------------------------------------------
    def set_search(self, term: str) -> int:
        """Highlight ``term``; returns the number of matching lines."""
        self._cache.clear()
        self.current = None
        self.search = LogSearch(self.lines_map, term) if term else None
        self.refresh()
        return len(self.search.matches) if self.search is not None else 0

    def find(self, forward: bool = True) -> int | None:
        """Move to the next (or previous) match, wrapping around; returns its line number."""
        search = self.search
        if search is None or not search.matches:
            return None
        if self.current is not None:
            start = self.current
        else:
            top = self._top_line()
            start = (top - 1 if forward else top + 1) if top is not None else -1
        found = search.next_after(start) if forward else search.previous_before(start)
        if found is None:
            found = search.matches[0] if forward else search.matches[-1]
        self.stop_follow()
        previous, self.current = self.current, found
        for number in (previous, found):
            if number is not None:
                self._cache.discard(number)
        middle = max(0, self.lines_map.row_of(found) - self.scrollable_content_region.height // 2)
        self._syncing = True
        try:
            self.scroll_to(y=middle, animate=False, force=True)
        finally:
            self._syncing = False
        self.refresh()
        return found

    # --- rendering ----------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row = round(self.scroll_y) + y
        if row >= self.lines_map.rows:
            if row == 0 and self.empty_text:
                style = self.get_component_rich_style("log-view--empty")
                segments = list(Text(" " + self.empty_text, style=style).render(self.app.console))
                return Strip(segments).adjust_cell_length(width, self.rich_style)
            return Strip.blank(width, self.rich_style)
        number, part = self.lines_map.locate(row)
        strip = self._cache.get(number)
        if strip is None:
            strip = self._render_strip(self.doc.line(number), number)
            self._cache[number] = strip
        if self.wrap and self.lines_map.wrap:
            prefix, text_width = self.prefix_width, self.lines_map.wrap
            start = prefix + part * text_width
            piece = strip.crop(start, start + text_width)
            if part == 0:
                piece = Strip.join([strip.crop(0, prefix), piece])
            else:
                piece = Strip.join([Strip.blank(prefix, self.rich_style), piece])
            return piece.adjust_cell_length(width, self.rich_style)
        scroll_x = round(self.scroll_x)
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _render_strip(self, line: LogLine, number: int) -> Strip:
        text = Text(no_wrap=True, end="")
        if self.timestamps:
            text.append(stamp(line.ts, self.zone) + " ", self._style("stamp"))
        gutter_style = self._style(line.stream) if line.stream != "stdout" else Style()
        text.append(GUTTER.get(line.stream, "  "), gutter_style)
        body_text = clean(line.text)
        body = (
            Text.from_ansi(body_text, no_wrap=True, end="")
            if "\x1b" in body_text
            else Text(body_text, no_wrap=True, end="")
        )
        if line.stream == "taskbus":
            body.stylize(self._style("taskbus"))
        search = self.search
        if search is not None and search.term:
            lowered = body.plain.lower()
            style = self._style("current" if number == self.current else "match")
            start = lowered.find(search.term)
            while start != -1:
                body.stylize(style, start, start + len(search.term))
                start = lowered.find(search.term, start + len(search.term))
        text.append_text(body)
        return Strip(list(text.render(self.app.console))).apply_style(self.rich_style)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"log-view--{name}")
