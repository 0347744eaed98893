"""The bottom line: the keys that work here, greyed when they do not apply.

Textual's ``Footer`` rebuilds a widget per key whenever the bindings change, which costs tens
of milliseconds; the actions here change as the cursor moves between tasks, so this bar is
one widget rendering one line of text. Clicking a key runs its action. When the terminal is
too narrow for every key, the view keys share one entry and the least needed keys go (``?``
lists them all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widget import Widget

PALETTE_HINT = "^p palette"
VIEW_ACTIONS = frozenset(f"view('{m}')" for m in ("tasks", "runs", "orchestrations", "executors"))
# Dropped first, in this order, when the line is too narrow (``?`` lists every key).
LEAST_NEEDED = ("command_line", "sort_next", "utc", "timestamps", "streams", "wrap")
KEPT = frozenset({"help", "quit"})


@dataclass(frozen=True)
class Entry:
    key: str
    description: str
    enabled: bool
    node: DOMNode | None = None  # None: a summary entry, not clickable
    binding: Binding | None = None

    @property
    def width(self) -> int:
        return cell_len(self.key) + cell_len(self.description) + 3

    @property
    def action(self) -> str:
        return self.binding.action if self.binding is not None else ""


def fit(entries: list[Entry], room: int) -> list[Entry]:
    """The entries that fit in ``room`` cells: the four view keys become one ``1-4 Views``,
    then the least needed keys go, then any but help and quit, from the right (views last)."""

    def width(items: list[Entry]) -> int:
        return sum(e.width for e in items)

    if width(entries) <= room:
        return entries
    views = [e for e in entries if e.action in VIEW_ACTIONS]
    if len(views) > 1:
        first = entries.index(views[0])
        keys = f"{views[0].key}-{views[-1].key}"
        rest = [e for e in entries if e.action not in VIEW_ACTIONS]
        entries = [*rest[:first], Entry(keys, "Views", True), *rest[first:]]
    for action in LEAST_NEEDED:
        if width(entries) <= room:
            return entries
        entries = [e for e in entries if e.action != action]
    while width(entries) > room:
        droppable = [e for e in entries if e.action not in KEPT and e.description != "Views"]
        droppable = droppable or [e for e in entries if e.action not in KEPT]
        if not droppable:
            break
        entries.remove(droppable[-1])
    return entries


class KeyBar(Widget):
    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $panel; color: $text; }
    KeyBar > .key-bar--key { color: $accent; text-style: bold; }
    KeyBar > .key-bar--disabled { color: $text-disabled; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"key-bar--key", "key-bar--disabled"}

    def __init__(self) -> None:
        super().__init__()
        self._targets: list[tuple[int, int, DOMNode, str]] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[object]) -> None:
        if screen is self.screen:
            self.refresh()

    def entries(self) -> list[Entry]:
        """The keys to show, in binding order (one per action)."""
        found: list[Entry] = []
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.show or not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            key = self.app.get_key_display(binding)
            found.append(Entry(key, binding.description, active.enabled, active.node, binding))
        return found

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key")
        disabled = self.get_component_rich_style("key-bar--disabled")
        hint = f" {PALETTE_HINT} "
        room = self.size.width - len(hint)
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        targets: list[tuple[int, int, DOMNode, str]] = []
        for entry in fit(self.entries(), room):
            start = line.cell_len
            line.append(" ")
            line.append(entry.key, key_style if entry.enabled else disabled)
            line.append(" ")
            line.append(entry.description, disabled if not entry.enabled else Style())
            line.append(" ")
            if entry.enabled and entry.node is not None and entry.binding is not None:
                targets.append((start, line.cell_len, entry.node, entry.binding.action))
        self._targets = targets
        if line.cell_len > room:
            line.truncate(max(0, room), overflow="ellipsis")
        line.append(" " * max(0, room - line.cell_len))
        line.append(hint, key_style)
        return line

    def on_click(self, event: events.Click) -> None:
        if event.x >= self.size.width - len(PALETTE_HINT) - 2:
            self.app.action_command_palette()
            return
        for start, end, node, action in self._targets:
            if start <= event.x < end:
                self.app.call_later(self.app.run_action, action, node)
                return
