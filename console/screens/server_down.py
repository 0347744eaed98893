"""Shown while no server has answered yet: what was tried, what to run, and that it retries."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Center, Vertical
from textual.screen import Screen
from textual.widgets import Static

from broker.text import printable
from console.context import context_of
from console.widgets.key_bar import KeyBar

REFRESH_S = 0.5


class ServerDownScreen(Screen[None]):
    DEFAULT_CSS = """
    ServerDownScreen { align: center middle; }
    ServerDownScreen Vertical {
        width: 90; height: auto; padding: 1 3; border: heavy $error; background: $surface;
    }
    ServerDownScreen #message { width: 100%; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "app.quit", "Quit")]

    def compose(self) -> ComposeResult:
        with Center(), Vertical():
            yield Static(id="message")
        yield KeyBar()

    def on_mount(self) -> None:
        self.update()
        self.set_interval(REFRESH_S, self.update)

    def update(self) -> None:
        state = context_of(self).state
        urls = ", ".join(state.urls)
        text = Text()
        text.append("Cannot reach a Taskbus server\n\n", style="bold")
        text.append("Tried: ")
        text.append(printable(urls), style="bold")
        text.append("\n\n")
        if state.link_detail:
            text.append("Reason: ")
            text.append(printable(state.link_detail))
            text.append("\n\n")
        text.append("To start one on this machine, run\n\n")
        text.append("    taskbus up", style="bold")
        text.append("        server, scheduler, executor and this console\n")
        text.append("    taskbus server", style="bold")
        text.append("    only the server\n\n")
        text.append("or point the console at a running server with --url or TASKBUS_URL.\n\n")
        text.append(
            f"Retrying… (attempt {state.attempts}); this screen goes away by itself.",
            style="italic",
        )
        self.query_one("#message", Static).update(text)
