"""What the scheduler knows about runs: the active runs of tasks with an overlap policy, and
the recent runs of continuous tasks. Fed by one watch on the runs bucket. Keyed by task key
(``<workspace>.<task_id>``), as everything of the scheduler's is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from broker.models import RunRecord
from broker.status import RUN_ACTIVE, RunStatus

# Recent runs kept per continuous task: enough to count a back-off streak to its cap
# (1 s doubling reaches 5 min after 9 failures).
HISTORY = 16


class RunBook:
    def __init__(self) -> None:
        self._active: dict[str, dict[str, RunStatus]] = {}
        self._recent: dict[str, dict[str, RunRecord]] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def clear(self) -> None:
        """Forget everything (before a watch replays the bucket after a reconnect)."""
        self._active.clear()
        self._recent.clear()

    def forget(self, task_id: str) -> None:
        self._active.pop(task_id, None)
        self._recent.pop(task_id, None)

    def apply(self, record: RunRecord, *, keep_history: bool) -> None:
        task_id, run_id = record.task_key, record.run_id
        if record.status in RUN_ACTIVE:
            self._active.setdefault(task_id, {})[run_id] = record.status
        else:
            active = self._active.get(task_id)
            if active is not None:
                active.pop(run_id, None)
                if not active:
                    del self._active[task_id]
        if keep_history:
            recent = self._recent.setdefault(task_id, {})
            recent[run_id] = record
            if len(recent) > 2 * HISTORY:
                newest = sorted(recent.values(), key=lambda r: r.created_at)[-HISTORY:]
                self._recent[task_id] = {r.run_id: r for r in newest}
        event = self._changed.pop(task_id, None)
        if event is not None:
            event.set()

    def active(self, task_id: str) -> list[str]:
        """Run ids of the task that are pending or running."""
        return list(self._active.get(task_id, ()))

    def newest_first(self, task_id: str) -> list[RunRecord]:
        runs = self._recent.get(task_id, {}).values()
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    async def wait_ended(self, task_id: str, run_ids: Iterable[str], timeout_s: float) -> bool:
        """Wait until none of ``run_ids`` is active; False when ``timeout_s`` ran out."""
        waiting = set(run_ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while waiting & set(self._active.get(task_id, ())):
            event = self._changed.setdefault(task_id, asyncio.Event())
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return False
        return True
