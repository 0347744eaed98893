"""The ``:`` prompt at the bottom of the screen, with completion of command names."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input

from console.commands import suggestions


class CommandLineScreen(ModalScreen[str | None]):
    DEFAULT_CSS = """
    CommandLineScreen { align: left bottom; background: transparent; }
    CommandLineScreen Input {
        dock: bottom; height: 1; border: none; padding: 0 1; background: $boost;
    }
    CommandLineScreen Input:focus { border: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder=(
                ":tasks failed · :runs · :orchestrations · :executors · :connections · "
                ":ws NAME · :help"
            ),
            suggester=SuggestFromList(suggestions(), case_sensitive=False),
            id="command",
        )

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
