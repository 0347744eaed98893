"""Executors: host, pool, slots in use, running runs, heartbeat age (red when stale), and
the ones that vanished, shown as lost."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text

from console.cells import EXECUTOR_STYLES, cell
from console.format import age, short_id
from console.screens.base import CommandRequested
from console.screens.listing import ListScreen
from console.state import ExecutorHealth
from console.widgets.record_table import Column, RecordTable


class ExecutorsScreen(ListScreen):
    VIEW = "Executors"
    WATCHES = ("executors", "tasks")
    NOUN = "executors"
    EMPTY = "No executors. Start one with `taskbus executor --url …` (or `taskbus up`)."
    COLUMNS: ClassVar[list[Column]] = [
        Column("host", "Host", min_width=12),
        Column("id", "Id", 24),  # host-pid-xxxx; the table ends a longer one with "…"
        Column("pool", "Pool", 10),
        Column("slots", "Slots", 7, justify="right"),
        Column("running", "Running", min_width=16),
        Column("heartbeat", "Heartbeat", 11),
        Column("state", "State", 6),
    ]
    FIELDS = ("host", "id", "pool", "state", "running")
    DEFAULT_SORT = ("host", False)

    def tick(self) -> None:
        self.sync()  # health is a function of time: re-filter and re-colour

    def all_keys(self) -> Iterable[str]:
        state = self.ctx.state
        state.forget_lost_executors(self.ctx.clock.now())
        return state.executors.keys()

    def health(self, key: str) -> ExecutorHealth:
        return self.ctx.state.executors[key].health(self.ctx.clock.now())

    def row_token(self, key: str) -> Hashable:
        entry = self.ctx.state.executors[key]
        return (entry.record, entry.gone, self.health(key))

    def running_text(self, key: str) -> str:
        """The runs it runs that this console knows (by their tokens); the others counted."""
        record = self.ctx.state.executors[key].record
        known = self.ctx.state.active_runs_by_token()
        shown, unknown = [], 0
        for token in record.running:
            if token not in known:
                unknown += 1
                continue
            task_key, run_id = known[token]
            shown.append(f"{self.ctx.state.task_name(task_key)}/{short_id(run_id, 6)}")
        if unknown:
            shown.append(f"{unknown} of other workspaces" if shown else f"{unknown} run(s)")
        return ", ".join(shown) or "-"

    def fields(self, key: str) -> dict[str, str]:
        record = self.ctx.state.executors[key].record
        return {
            "host": record.host,
            "id": record.id,
            "pool": record.pool,
            "state": str(self.health(key)),
            "running": self.running_text(key),
        }

    def sort_value(self, key: str, column: str) -> Any:
        record = self.ctx.state.executors[key].record
        if column == "heartbeat":
            return -record.heartbeat_at.timestamp()
        if column == "slots":
            return len(record.running)
        return self.filter_values(key)[0].get(column, "").lower()

    def on_record_table_selected(self, event: RecordTable.Selected) -> None:
        if event.key in self.ctx.state.executors:
            self.post_message(CommandRequested(f"runs executor={event.key}"))

    def render_row(self, key: str) -> tuple[Sequence[Text], str]:
        entry = self.ctx.state.executors.get(key)
        if entry is None:
            return [cell(key)], "muted"
        record = entry.record
        health = entry.health(self.ctx.clock.now())
        heartbeat = cell(age(record.heartbeat_at, self.ctx.clock.now()))
        if health is not ExecutorHealth.ALIVE:
            heartbeat.stylize(self.table.get_component_rich_style("record-table--bad"))
        cells = [
            cell(record.host),
            cell(record.id),
            cell(record.pool),
            cell(f"{len(record.running)}/{record.slots}"),
            cell(self.running_text(key)),
            heartbeat,
            cell(health),
        ]
        return cells, EXECUTOR_STYLES[health]
