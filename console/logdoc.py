"""A run's log lines in memory, and how they map to rows on screen. No Textual, no NATS.

``LogDocument`` is the buffer: NATS callbacks ``push`` batches (O(batch), duplicates and gaps
detected by the per-run sequence), a 10-20 Hz timer ``drain``s them into the line list in one
step, so a burst of tens of thousands of lines costs the UI one update per tick. Past
``max_lines`` the oldest lines are dropped in chunks (a ring buffer; the screen says so).

``LogLayout`` maps visual rows to lines under a stream filter and an optional wrap width
(character wrap, so the row count of a line is known without rendering it), and ``LogSearch``
keeps the matches of a search term as lines arrive.

next: ``console.widgets.log_view`` (the widget that drains and draws a document).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from rich.cells import cell_len

from broker.models import LogLine
from broker.text import CONTROL, SGR, printable_ansi

DEFAULT_MAX_LINES = 500_000


def clean(text: str) -> str:
    """A line ready for ``Text.from_ansi``: the line ending dropped, tabs expanded to spaces
    the way a terminal counts columns, SGR colours kept for the renderer and every other
    control character escaped (``\\x1b]52;…``, ``\\r``): shown, never obeyed (broker.text)."""
    text = printable_ansi(text.rstrip("\r\n"), keep="\t")
    return _expand_tabs(text) if "\t" in text else text


def _expand_tabs(text: str) -> str:
    """Tabs to spaces, counting columns the way a terminal does (colour codes take none)."""
    if "\x1b" not in text:
        return text.expandtabs(8)
    out: list[str] = []
    column = 0
    position = 0
    for match in SGR.finditer(text):
        expanded = (" " * column + text[position : match.start()]).expandtabs(8)[column:]
        out.append(expanded)
        out.append(match.group(0))
        column += len(expanded)
        position = match.end()
    out.append((" " * column + text[position:]).expandtabs(8)[column:])
    return "".join(out)


def plain(text: str) -> str:
    """The characters a person sees: ``clean`` without its colour sequences."""
    if text.isascii() and text.isprintable():
        return text
    return SGR.sub("", clean(text))


def width_of(text: str) -> int:
    """Cells the line takes on screen (exact: wrapping depends on it)."""
    if text.isascii() and text.isprintable():
        return len(text)
    return cell_len(plain(text))


def width_bound(text: str) -> int:
    """A cheap upper bound of ``width_of`` (colour codes counted as text): enough to size a
    horizontal scroll without decoding every line of a burst."""
    base = len(text) if text.isascii() else 2 * len(text)
    if text.isprintable():
        return base
    # a control character shows as an escape of at most 6 cells, a tab as at most 8
    return base + 7 * len(CONTROL.findall(text))


class LogDocument:
    def __init__(self, max_lines: int = DEFAULT_MAX_LINES) -> None:
        self.max_lines = max_lines
        self.lines: list[LogLine] = []
        self.first = 0  # absolute number of lines[0]; grows when old lines are dropped
        self.pending: list[LogLine] = []
        self.last_seq = 0
        self.missing = 0  # lines the sequence says we never received
        self.eof = False  # the executor sent the run's last batch

    @property
    def end(self) -> int:
        """Absolute number one past the last drained line."""
        return self.first + len(self.lines)

    @property
    def received(self) -> int:
        return self.end + len(self.pending)

    def push(self, lines: Iterable[LogLine], *, eof: bool = False) -> None:
        """Called from the NATS callback: O(len(lines)), no rendering."""
        if eof:
            self.eof = True
        batch = lines if isinstance(lines, list) else list(lines)
        if not batch:
            return
        last = self.last_seq
        if batch[0].seq == last + 1 and batch[-1].seq == last + len(batch):
            self.pending.extend(batch)  # the normal case: in order, nothing missing
            self.last_seq = batch[-1].seq
            return
        for line in batch:
            if line.seq <= self.last_seq:
                continue  # a replay after a reconnect
            if line.seq > self.last_seq + 1:
                self.missing += line.seq - self.last_seq - 1
            self.pending.append(line)
            self.last_seq = line.seq

    def drain(self) -> tuple[int, int]:
        """Move pending lines into the document; returns (lines added, old lines dropped)."""
        added = len(self.pending)
        if added:
            self.lines.extend(self.pending)
            self.pending = []
        dropped = 0
        if len(self.lines) > self.max_lines:
            dropped = len(self.lines) - self.max_lines + self.max_lines // 10
            del self.lines[:dropped]
            self.first += dropped
        return added, dropped

    def line(self, number: int) -> LogLine:
        return self.lines[number - self.first]


class LogLayout:
    """Visual rows of a document under a stream filter and a wrap width."""

    def __init__(self, doc: LogDocument) -> None:
        self.doc = doc
        self.streams: frozenset[str] | None = None  # None: every stream
        self.wrap: int | None = None  # columns for text when wrapping, else None
        self.prefix = 0  # columns before the text (timestamp, stream mark)
        self.shown: list[int] = []  # absolute line numbers passing the filter
        self.ends: list[int] = []  # when wrapping: rows through shown[i], plus ``skipped``
        self.skipped = 0  # rows of lines dropped from the front (ring buffer)
        self.max_width = 0
        self.synced = 0  # absolute line number the layout has seen up to

    def configure(self, *, streams: frozenset[str] | None, wrap: int | None, prefix: int) -> bool:
        """Change settings; True when that rebuilt the layout."""
        wrap = max(1, wrap) if wrap is not None else None
        if (streams, wrap, prefix) == (self.streams, self.wrap, self.prefix):
            return False
        self.streams, self.wrap, self.prefix = streams, wrap, prefix
        self.rebuild()
        return True

    def rebuild(self) -> None:
        self.shown = []
        self.ends = []
        self.skipped = 0
        self.max_width = 0
        self.synced = self.doc.first
        self.extend()

    @property
    def identity(self) -> bool:
        return self.streams is None and self.wrap is None

    def extend(self) -> int:
        """Take in lines drained since the last call; returns rows added."""
        doc = self.doc
        if self.synced < doc.first:
            self._trim()
        start = self.synced - doc.first
        new = doc.lines[start:]
        self.synced = doc.end
        if not new:
            return 0
        before = self.rows
        streams, wrap = self.streams, self.wrap
        widest = self.max_width
        number = doc.first + start
        if self.identity:
            for line in new:
                width = width_bound(line.text)
                if width > widest:
                    widest = width
        else:
            shown, ends = self.shown, self.ends
            total = ends[-1] if ends else self.skipped
            for line in new:
                if streams is None or line.stream in streams:
                    shown.append(number)
                    if wrap is not None:
                        width = width_of(line.text)
                        total += max(1, -(-width // wrap))
                        ends.append(total)
                    else:
                        width = width_bound(line.text)
                    if width > widest:
                        widest = width
                number += 1
        self.max_width = widest
        return self.rows - before

    def _trim(self) -> None:
        """Forget lines the document dropped, without revisiting the ones it kept."""
        first = self.doc.first
        if not self.identity:
            cut = bisect_left(self.shown, first)
            if cut:
                del self.shown[:cut]
                if self.wrap is not None:
                    self.skipped = self.ends[cut - 1]
                    del self.ends[:cut]
        self.synced = max(self.synced, first)

    @property
    def rows(self) -> int:
        if self.identity:
            return self.synced - self.doc.first
        if self.wrap is not None:
            return (self.ends[-1] if self.ends else self.skipped) - self.skipped
        return len(self.shown)

    @property
    def count(self) -> int:
        """Lines shown (not rows)."""
        return self.synced - self.doc.first if self.identity else len(self.shown)

    def locate(self, row: int) -> tuple[int, int]:
        """(absolute line number, row within the wrapped line) at visual ``row``."""
        if self.identity:
            return self.doc.first + row, 0
        if self.wrap is None:
            return self.shown[row], 0
        index = bisect_right(self.ends, row + self.skipped)
        start = (self.ends[index - 1] - self.skipped) if index else 0
        return self.shown[index], row - start

    def row_of(self, number: int) -> int:
        """First visual row of line ``number`` (or of the next shown line after it)."""
        if self.identity:
            return max(0, number - self.doc.first)
        index = bisect_left(self.shown, number)
        if self.wrap is None:
            return index
        return (self.ends[index - 1] - self.skipped) if index else 0

    def numbers(self) -> Iterable[int]:
        if self.identity:
            return range(self.doc.first, self.synced)
        return self.shown


class LogSearch:
    """Lines whose visible text contains a term (case-insensitive), kept up to date."""

    def __init__(self, layout: LogLayout, term: str) -> None:
        self.layout = layout
        self.term = term.lower()
        self.matches: list[int] = []
        self.synced = layout.doc.first
        self.rescan()

    def rescan(self) -> None:
        self.matches = []
        self.synced = self.layout.doc.first
        self.extend()

    def extend(self) -> None:
        doc, layout, term = self.layout.doc, self.layout, self.term
        if self.synced < doc.first:
            self.matches = [m for m in self.matches if m >= doc.first]
            self.synced = doc.first
        streams = layout.streams
        number = self.synced
        for line in doc.lines[self.synced - doc.first : layout.synced - doc.first]:
            if (streams is None or line.stream in streams) and term in plain(line.text).lower():
                self.matches.append(number)
            number += 1
        self.synced = layout.synced

    def next_after(self, number: int) -> int | None:
        index = bisect_right(self.matches, number)
        return self.matches[index] if index < len(self.matches) else None

    def previous_before(self, number: int) -> int | None:
        index = bisect_left(self.matches, number)
        return self.matches[index - 1] if index else None

    def index_of(self, number: int) -> int:
        """1-based position of match ``number`` (0 when it is not a match)."""
        index = bisect_left(self.matches, number)
        if index < len(self.matches) and self.matches[index] == number:
            return index + 1
        return 0
