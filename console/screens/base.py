"""What every console screen shares: the status bar, the footer, and the redraw timer.

Screens never redraw from NATS callbacks. A change only ``poke``s the visible screen, which
schedules one redraw at most 4 times a second (the first change after a quiet spell is drawn
at once: a lone update shows within milliseconds, a storm of them costs 4 redraws a second).
A 1 Hz timer redraws anyway so ages and durations tick. Only the screen on top (or just under
a dialog) does this work.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Static

from broker.errors import PermissionDenied
from broker.text import printable
from console.context import Context, context_of
from console.widgets.key_bar import KeyBar
from console.widgets.status_bar import StatusBar

MIN_REDRAW_S = 0.2  # at most 5 redraws a second: coalesced, and a change shows within 200 ms
TICK_S = 1.0


class CommandRequested(Message):
    """Run a ``:`` command (the app handles it): how a screen opens another view."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ConsoleScreen(Screen[None]):
    VIEW: ClassVar[str] = ""
    WATCHES: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self._seen = -1
        self._last_draw = 0.0  # last full redraw (rate-limited to 4 a second)
        self._last_paint = 0.0  # last redraw or tick (ages move once a second)
        self._poke_pending = False
        self._ctx: Context | None = None
        self._static_texts: dict[str, Text] = {}

    @property
    def ctx(self) -> Context:
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = context_of(self)
        return ctx

    def compose(self) -> ComposeResult:
        yield StatusBar(self.view_name())
        yield from self.compose_body()
        yield KeyBar()

    def compose_body(self) -> Iterable[Widget]:
        return ()

    def view_name(self) -> str:
        return self.VIEW

    def on_mount(self) -> None:
        self.set_interval(TICK_S, self._on_timer)
        self.call_after_refresh(self.redraw)

    def on_screen_resume(self) -> None:
        if self.data_version() != self._seen:
            self.redraw()
        else:
            self.tick()

    def data_version(self) -> int:
        return self.ctx.state.version_of(*self.WATCHES, "link", "workspace")

    def _visible(self) -> bool:
        stack = self.app.screen_stack
        if not stack:
            return False
        if stack[-1] is self:
            return True
        return isinstance(stack[-1], ModalScreen) and len(stack) > 1 and stack[-2] is self

    def _on_timer(self) -> None:
        if not self._visible() or time.monotonic() - self._last_paint < TICK_S * 0.9:
            return
        if self.data_version() != self._seen:
            self.redraw()
        else:
            self._last_paint = time.monotonic()
            self.tick()

    def poke(self) -> None:
        """Something changed: redraw soon, but not more than 4 times a second."""
        if self._poke_pending:
            return
        self._poke_pending = True
        delay = self._last_draw + MIN_REDRAW_S - time.monotonic()
        if delay <= 0:
            self.call_later(self._poked)
        else:
            self.set_timer(delay, self._poked)

    def _poked(self) -> None:
        self._poke_pending = False
        if self._visible() and self.data_version() != self._seen:
            self.redraw()

    def up_to_date(self) -> bool:
        """True once the screen has drawn the latest state (tests and benchmarks wait on it)."""
        return self._seen == self.data_version()

    def redraw(self) -> None:
        self._seen = self.data_version()
        self._last_draw = self._last_paint = time.monotonic()
        self.sync()
        for bar in self.query(StatusBar):
            bar.refresh()

    def tick(self) -> None:
        """Nothing changed but time: ages and durations move (once a second)."""
        self.sync()

    def sync(self) -> None:
        """Bring the widgets up to date with the state (called at most 4 times a second)."""

    def show(self, selector: str, text: Text, *, fixed: bool = False) -> None:
        """Update a Static only when its text changed (an update may cost a layout pass);
        ``fixed`` for one-line widgets whose size cannot change."""
        if self._static_texts.get(selector) == text:
            return
        self._static_texts[selector] = text
        self.query_one(selector, Static).update(text, layout=not fixed)

    def act(self, work: Awaitable[object], done: str = "") -> None:
        """Run an action on the bus; report its failure (or ``done``) as a notification, with
        the control characters of names in them escaped."""

        async def run() -> None:
            try:
                await work
            except PermissionDenied as exc:  # the credential's role does not allow it
                self.notify(printable(str(exc)), title="Refused", severity="error", markup=False)
                return
            except Exception as exc:
                self.notify(printable(str(exc)), title="Failed", severity="error", markup=False)
                return
            if done:
                self.notify(printable(done, keep="\n"), markup=False)
            self.redraw()

        self.run_worker(run(), group="actions")
