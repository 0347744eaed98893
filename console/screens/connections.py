"""Data connections: name, type, the workspaces each is added to, when it was made.

Details never show: they travel as a Fernet token the console cannot open (it holds no key
and needs none), so there is nothing to mask here but also nothing to leak. A credential the
server refuses the connections bucket gets the refusal as the table's message.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text

from console.cells import cell
from console.format import DASH, clock_time
from console.screens.listing import ListScreen
from console.widgets.record_table import Column

ENCRYPTED = "encrypted"  # the Details column: values are never in the console's hands


class ConnectionsScreen(ListScreen):
    VIEW = "Connections"
    WATCHES = ("connections",)
    NOUN = "connections"
    EMPTY = (
        "No connections yet. Create one from the SDK (create_connection) or "
        "`taskbus connections create`."
    )
    COLUMNS: ClassVar[list[Column]] = [
        Column("name", "Name", min_width=16),
        Column("type", "Type", 14),
        Column("workspaces", "Workspaces", min_width=20),
        Column("details", "Details", 10),
        Column("created", "Created", 19),
    ]
    FIELDS = ("name", "type", "workspaces")
    DEFAULT_SORT = ("name", False)

    def all_keys(self) -> Iterable[str]:
        return self.ctx.state.connections.keys()

    def row_token(self, key: str) -> Hashable:
        return self.ctx.state.connections.get(key)

    def fields(self, key: str) -> dict[str, str]:
        record = self.ctx.state.connections[key]
        return {
            "name": record.name,
            "type": record.connection_type,
            "workspaces": ", ".join(record.workspaces),
        }

    def in_workspace(self, key: str) -> bool:
        record = self.ctx.state.connections[key]
        return self.ctx.state.workspace in record.workspaces

    def sort_value(self, key: str, column: str) -> Any:
        record = self.ctx.state.connections[key]
        if column == "created":
            return record.created_at.timestamp()
        if column == "name":
            return record.name.lower()
        return self.filter_values(key)[0].get(column, "").lower()

    def empty_message(self) -> str:
        refused = self.ctx.state.refused.get("connections")
        if refused:
            return f"Connections cannot be shown: {refused}"
        return super().empty_message()

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        record = self.ctx.state.connections.get(key)
        if record is None:
            return [cell(key)], "muted"
        cells = [
            cell(record.name),
            cell(record.connection_type),
            cell(", ".join(record.workspaces) or DASH),
            cell(ENCRYPTED),
            cell(clock_time(record.created_at, self.ctx.clock.local)),
        ]
        return cells, ""
