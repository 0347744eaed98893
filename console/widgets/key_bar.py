"""The bottom line: the keys that work here, greyed when they do not apply.

Textual's ``Footer`` rebuilds a widget per key whenever the bindings change, which costs tens
of milliseconds; the actions here change as the cursor moves between tasks, so this bar is
one widget rendering one line of text. Clicking a key runs its action.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widget import Widget

PALETTE_HINT = "^p palette"


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

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key")
        disabled = self.get_component_rich_style("key-bar--disabled")
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        targets: list[tuple[int, int, DOMNode, str]] = []
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.show or not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            start = line.cell_len
            line.append(" ")
            shown = self.app.get_key_display(binding)
            line.append(shown, key_style if active.enabled else disabled)
            line.append(" ")
            line.append(binding.description, disabled if not active.enabled else Style())
            line.append(" ")
            if active.enabled:
                targets.append((start, line.cell_len, active.node, binding.action))
        self._targets = targets
        hint = f" {PALETTE_HINT} "
        room = self.size.width - len(hint)
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
