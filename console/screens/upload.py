"""The ``u`` dialog: upload an orchestration zip from a path; problems show inline."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, Static

from broker.models import OrchestrationRecord
from broker.text import printable
from console.context import context_of


def complete_path(value: str) -> str | None:
    """``value`` extended to the first directory or .zip it is the start of."""
    path = Path(os.path.expanduser(value))
    folder, stem = (path, "") if value.endswith(os.sep) else (path.parent, path.name)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        if name.startswith(stem) and name != stem:
            full = folder / name
            if full.is_dir() or name.endswith(".zip"):
                suffix = os.sep if full.is_dir() else ""
                return value + name[len(stem) :] + suffix
    return None


class PathSuggester(Suggester):
    """Completes a path from the file system (directories and .zip files)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        return await asyncio.to_thread(complete_path, value)


NAME_PLACEHOLDER = "the file name without .zip"


def default_name(path: str) -> str:
    """The name an upload gets when none is given (catalog: the file name without .zip)."""
    return Path(path.strip()).name.removesuffix(".zip")


class UploadScreen(ModalScreen[OrchestrationRecord | None]):
    DEFAULT_CSS = """
    UploadScreen { align: center middle; }
    UploadScreen > Vertical {
        width: 80; height: auto; padding: 1 2; border: thick $primary; background: $surface;
    }
    UploadScreen #title { text-style: bold; margin-bottom: 1; }
    UploadScreen Label { margin-top: 1; color: $text-muted; }
    UploadScreen #error { color: $error; margin-top: 1; display: none; }
    UploadScreen #error.-shown { display: block; }
    UploadScreen Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    UploadScreen Button { margin-left: 2; }
    """
    AUTO_FOCUS = "#path"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            workspace = context_of(self).state.workspace
            title = "Upload an orchestration"
            if workspace is not None:
                title += f" to workspace {printable(workspace)}"
            yield Static(Text(title), id="title")
            yield Label("Path of the .zip (→ completes)")
            yield Input(placeholder="~/work/hello.zip", id="path", suggester=PathSuggester())
            yield Label("Name (optional; defaults to the file name)")
            yield Input(placeholder=NAME_PLACEHOLDER, id="name")
            yield Static(id="error", markup=False)
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button("Upload", id="upload", variant="primary")

    def show_error(self, message: str) -> None:
        error = self.query_one("#error", Static)
        error.update(Text(printable(message, keep="\n")))
        error.set_class(bool(message), "-shown")

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "path":
            name = default_name(event.value) if not event.value.endswith(os.sep) else ""
            self.query_one("#name", Input).placeholder = name or NAME_PLACEHOLDER

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "path" and not self.query_one("#name", Input).value:
            self.query_one("#name", Input).focus()
            return
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "upload":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if not path:
            self.show_error("Give the path of a .zip file.")
            self.query_one("#path", Input).focus()
            return
        self.show_error("")
        self.upload(path, self.query_one("#name", Input).value.strip())

    @work(exclusive=True, group="upload")
    async def upload(self, path: str, name: str) -> None:
        button = self.query_one("#upload", Button)
        button.disabled = True
        try:
            ctx = context_of(self)
            record = await ctx.feed.upload(path, name or None, ctx.state.workspace)
        except Exception as exc:  # every failure is shown inline, the dialog stays open
            self.show_error(str(exc))
            return
        finally:
            button.disabled = False
        self.dismiss(record)
