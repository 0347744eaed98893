"""Uploaded orchestrations: packaging status (and its error), sha, file; ``u`` uploads one."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from broker.models import OrchestrationRecord
from broker.status import ORCHESTRATION_SETTLED, OrchestrationStatus
from broker.text import printable
from console.cells import ORCHESTRATION_STYLES, cell
from console.format import DASH, clock_time, short_sha, span
from console.screens.base import CommandRequested
from console.screens.listing import ListScreen
from console.screens.upload import UploadScreen
from console.state import workspace_name
from console.widgets.record_table import Column, RecordTable


class OrchestrationsScreen(ListScreen):
    VIEW = "Orchestrations"
    WATCHES = ("orchestrations",)
    NOUN = "orchestrations"
    EMPTY = "No orchestrations yet. Press u to upload a zip with a main.py."
    DEFAULT_CSS = """
    OrchestrationsScreen #detail {
        height: auto; max-height: 8; padding: 0 1; background: $boost;
    }
    """
    COLUMNS: ClassVar[list[Column]] = [
        Column("name", "Name", min_width=14),
        Column("status", "Status", 18),  # "packaging 12m05s"; errors have their own column
        Column("error", "Error", 20),  # cut with "…": the pane below has it whole
        Column("sha", "SHA", 15),
        Column("file", "File", min_width=18),
        Column("workspace", "Workspace", 10),
        Column("created", "Created", 19),
    ]
    FIELDS = ("name", "status", "error", "sha", "file", "id", "workspace")
    DEFAULT_SORT = ("created", True)
    BINDINGS: ClassVar[list[BindingType]] = [Binding("u", "upload", "Upload", id="upload")]

    def compose_extra(self) -> Iterable[Widget]:
        yield Static(id="detail")

    def all_keys(self) -> Iterable[str]:
        return self.ctx.state.orchestrations.keys()

    def row_token(self, key: str) -> Hashable:
        return self.ctx.state.orchestrations.get(key)

    def fields(self, key: str) -> dict[str, str]:
        orch = self.ctx.state.orchestrations[key]
        return {
            "name": orch.name,
            "status": str(orch.status),
            "error": orch.error,
            "sha": orch.sha,
            "file": orch.file_name,
            "id": orch.id,
            "workspace": workspace_name(orch.workspace),
        }

    def in_workspace(self, key: str) -> bool:
        return self.ctx.state.in_workspace(self.ctx.state.orchestrations[key].workspace)

    def sort_value(self, key: str, column: str) -> Any:
        orch = self.ctx.state.orchestrations[key]
        if column == "created":
            return orch.created_at.timestamp()
        if column == "name":
            return orch.name.lower()
        return self.filter_values(key)[0].get(column, "")

    def status_text(self, orch: OrchestrationRecord) -> str:
        if orch.status in ORCHESTRATION_SETTLED:
            return str(orch.status)
        waited = (self.ctx.clock.now() - orch.updated_at).total_seconds()
        return f"{orch.status} {span(waited)}"

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        orch = self.ctx.state.orchestrations.get(key)
        if orch is None:
            return [cell(key)], "muted"
        cells = [
            cell(orch.name),
            cell(self.status_text(orch)),
            cell(orch.error.replace("\n", " ") or DASH),
            cell(short_sha(orch.sha)),
            cell(orch.file_name),
            cell(workspace_name(orch.workspace)),
            cell(clock_time(orch.created_at, self.ctx.clock.local)),
        ]
        return cells, ORCHESTRATION_STYLES.get(orch.status, "")

    def after_sync(self) -> None:
        self.show_detail()

    def on_record_table_cursor_moved(self, event: RecordTable.CursorMoved) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        key = self.table.cursor_key
        orch = self.ctx.state.orchestrations.get(key) if key else None
        detail = self.query_one("#detail", Static)
        text = Text(overflow="fold")
        if orch is not None:
            dim = Style(dim=True)
            text.append(printable(orch.name), style="bold")
            text.append(f"  {self.status_text(orch)}  ")
            text.append("id ", dim)
            text.append(printable(orch.id))
            text.append("  sha ", dim)
            text.append(printable(orch.sha))
            text.append("  workspace ", dim)
            text.append(printable(workspace_name(orch.workspace)))
            text.append("\nentrypoint ", dim)
            text.append(printable(orch.entrypoint) or DASH)
            text.append("  requirements ", dim)
            text.append(f"{len(orch.lock.splitlines())} pinned" if orch.lock else "none")
            if orch.python:
                text.append(f" (python {printable(orch.python)})")
            if orch.status is OrchestrationStatus.ERROR:
                text.append("\nerror ", Style(bold=True))
                text.append(printable(orch.error, keep="\n") or "(no message)")
        self.show("#detail", text)
        detail.display = orch is not None

    def on_record_table_selected(self, event: RecordTable.Selected) -> None:
        if event.key in self.ctx.state.orchestrations:
            self.post_message(CommandRequested(f"tasks orch_id={event.key}"))

    def action_upload(self) -> None:
        def uploaded(record: OrchestrationRecord | None) -> None:
            if record is not None:
                name = printable(record.name)
                self.notify(f"Uploaded {name} ({short_sha(record.sha)})", markup=False)
                self.redraw()
                self.table.select_key(record.id)

        self.app.push_screen(UploadScreen(), uploaded)
