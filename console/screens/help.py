"""``?``: the keys of the screen underneath, the commands, and the filter syntax."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from console.commands import COMMANDS

FILTER_HELP = (
    "text              rows containing text (any column)\n"
    "status=failed     a column equal to a value (several: status=failed,timed_out)\n"
    "name~nightly      a column containing text\n"
    "!text  !f=v  f!=v the inverse\n"
    "last=failure      tasks whose newest run failed (status is the task's own)\n"
    "terms are combined with AND"
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 96; height: 80%; padding: 1 2; border: thick $primary; background: $surface;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, under: Screen[object]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold")
        keys.add_column()
        rows: dict[str, tuple[list[str], bool]] = {}
        for active in self.under.active_bindings.values():
            binding = active.binding
            if not binding.description:
                continue
            shown, enabled = rows.setdefault(binding.description, ([], False))
            shown.append(self.app.get_key_display(binding))
            rows[binding.description] = (shown, enabled or active.enabled)
        for description, (shown, enabled) in rows.items():
            style = "" if enabled else "dim"
            keys.add_row(Text(", ".join(shown)), Text(description, style=style))
        commands = Table.grid(padding=(0, 2))
        commands.add_column(style="bold")
        commands.add_column()
        for command in COMMANDS:
            aliases = f" ({', '.join(command.aliases)})" if command.aliases else ""
            commands.add_row(
                Text(f":{command.name} {command.args}".rstrip()),
                Text(f"{command.help}{aliases}"),
            )
        with VerticalScroll():
            yield Static(Text("Keys on this screen", style="bold underline"))
            yield Static(keys)
            yield Static(Text("\nCommands (type : then a command)", style="bold underline"))
            yield Static(commands)
            yield Static(Text("\nFilter (/)", style="bold underline"))
            yield Static(Text(FILTER_HELP))
            yield Static(
                Text(
                    "\nctrl+p opens the command palette: every action, searchable. "
                    "The mouse works too: click a row, double-click to open, click a header "
                    "to sort.",
                    style="italic",
                )
            )

    def action_close(self) -> None:
        self.dismiss(None)
