"""The ``/`` line under a table: typing filters at once, enter keeps it, escape clears it."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input

PLACEHOLDER = (
    "filter: text · status=failed · name~nightly · !text (inverse) · enter keeps, esc clears"
)


class FilterBar(Input):
    DEFAULT_CSS = """
    FilterBar {
        display: none;
        height: 1;
        border: none;
        padding: 0 1;
        background: $boost;
    }
    FilterBar:focus { border: none; }
    FilterBar.-shown { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Clear filter", show=True),
    ]

    class Cancelled(Message):
        """Escape: clear the filter and hide the bar."""

    def __init__(self, *, placeholder: str = PLACEHOLDER, id: str | None = None) -> None:
        super().__init__(placeholder=placeholder, id=id, select_on_focus=False)

    def open(self, text: str) -> None:
        self.value = text
        self.cursor_position = len(text)
        self.add_class("-shown")
        self.focus()

    def close(self) -> None:
        self.remove_class("-shown")

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled())
