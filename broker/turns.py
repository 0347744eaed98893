"""Sharing the UI loop with a flood of NATS messages.

nats-py runs a subscription's callback for every queued message without yielding while its
queue is not empty, so a burst (100,000 runs replayed, a log writer at full speed) would
starve key presses and repaints. Callbacks call ``Turns.take()``: after a few milliseconds of
work it yields once, so the UI gets a turn at least that often.
"""

from __future__ import annotations

import asyncio
import time

BUDGET_S = 0.004  # callback work between two turns for the UI


class Turns:
    def __init__(self, budget_s: float = BUDGET_S) -> None:
        self.budget_s = budget_s
        self._since = time.perf_counter()

    async def take(self) -> None:
        now = time.perf_counter()
        if now - self._since >= self.budget_s:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
