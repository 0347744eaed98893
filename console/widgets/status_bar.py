"""The top line of every screen: where you are, the connection (and to which server), a full
store, what was dropped, the time."""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from broker.text import printable
from console.context import context_of
from console.format import SEP, count
from console.state import Link

REFRESH_S = 0.5


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; }
    StatusBar > .status-bar--title { text-style: bold; color: $accent; }
    StatusBar > .status-bar--ok { color: $success; }
    StatusBar > .status-bar--warn { color: $warning; text-style: bold; }
    StatusBar > .status-bar--bad { color: $error; text-style: bold; }
    StatusBar > .status-bar--muted { color: $text-muted; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status-bar--title",
        "status-bar--ok",
        "status-bar--warn",
        "status-bar--bad",
        "status-bar--muted",
    }

    def __init__(self, view: str) -> None:
        super().__init__()
        self.view = view

    def on_mount(self) -> None:
        self.set_interval(REFRESH_S, self.refresh)

    def render(self) -> Text:
        ctx = context_of(self)
        state, clock = ctx.state, ctx.clock

        def style(name: str) -> Style:
            return self.get_component_rich_style(f"status-bar--{name}")

        line = Text(no_wrap=True, overflow="ellipsis", end="")
        line.append(" Taskbus ", style("title"))
        line.append(f"{SEP.strip()} {printable(self.view)}  ")
        if state.workspace is not None:  # every view is narrowed to it: say so up front
            line.append("workspace ", style("muted"))
            line.append(printable(state.workspace), style("warn"))
            line.append("  ")
        link = state.link
        if link is Link.CONNECTED:
            line.append("● connected", style("ok"))
        elif link is Link.RECONNECTING:
            line.append("◌ reconnecting…", style("warn"))
            why = disconnect_reason(ctx.feed.last_error or state.link_detail)
            if why:
                line.append(f" ({why})", style("warn"))
        elif link is Link.DOWN:
            line.append("✕ no server", style("bad"))
        else:
            line.append("◌ connecting…", style("warn"))
        if state.server:
            line.append(f" {printable(state.server)}", style("muted"))
        store_full = state.store_full()
        if store_full:
            line.append("  ✕ store full", style("bad"))
            line.append(f" ({store_problem(store_full)}: free space)", style("bad"))
        dropped = ctx.feed.dropped()
        line.append("  dropped ", style("muted"))
        line.append(count(dropped), style("bad" if dropped else "muted"))
        loading = [name for name in ("tasks", "runs") if name not in state.loaded]
        totals = (
            f"   tasks {count(len(state.tasks))} · runs {count(state.run_count)}"
            f" · orchs {count(len(state.orchestrations))}"
            f" · executors {count(len(state.executors))}"
        )
        now = clock.now().astimezone(clock.local)
        stamp = f"{now:%H:%M:%S %Z} "
        if line.cell_len + len(totals) + len(stamp) < self.size.width:
            line.append(totals, style("muted"))  # the first thing to go when narrow
        if loading and link is Link.CONNECTED:
            line.append(f"  loading {', '.join(loading)}…", style("warn"))
        pad = self.size.width - line.cell_len - len(stamp)
        if pad > 0:
            line.append(" " * pad)
            line.append(stamp, style("muted"))
        return line


def disconnect_reason(error: str) -> str:
    """Why the connection is down, short: the last error of the connection's attempts."""
    lowered = error.lower()
    if "refused" in lowered or "connect call failed" in lowered:
        return "server not running: connection refused"
    if "authorization" in lowered:
        return "the server refused the credentials"
    return error.splitlines()[0][:60] if error else ""


def store_problem(said: str) -> str:
    """nats-server's line about its full store, short: its cause."""
    lowered = said.lower()
    for cause in ("no space left on device", "out of space"):
        if cause in lowered:
            return cause
    return printable(said)[-60:]
