"""The next thing to do for every armed task, in a heap: the clock sleeps until the earliest.

Re-arming or disarming a task bumps its generation; stale heap entries are skipped when they
surface (and the heap is compacted when they outnumber live ones), so a change is O(log n).

next: ``broker.scheduler.policy`` (what the daemon does with the instants popped here).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(order=True, slots=True)
class _Entry:
    when: datetime
    seq: int
    task_id: str = field(compare=False)
    generation: int = field(compare=False)


class Timetable:
    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._generation: dict[str, int] = {}
        self._armed: dict[str, datetime] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, task_id: str, when: datetime) -> bool:
        """Schedule ``task_id`` at ``when`` (replacing what it had); True when this moved the
        earliest entry earlier (the clock must wake up)."""
        if self._armed.get(task_id) == when:
            return False
        generation = self._generation.get(task_id, 0) + 1
        self._generation[task_id] = generation
        self._armed[task_id] = when
        earliest = self.earliest()
        heapq.heappush(self._heap, _Entry(when, next(self._seq), task_id, generation))
        self._compact()
        return earliest is None or when < earliest

    def disarm(self, task_id: str) -> None:
        if self._armed.pop(task_id, None) is not None:
            self._generation[task_id] = self._generation.get(task_id, 0) + 1

    def earliest(self) -> datetime | None:
        self._drop_stale()
        return self._heap[0].when if self._heap else None

    def pop_due(self, now: datetime) -> list[tuple[str, datetime]]:
        """Every armed (task, when) with ``when <= now``, earliest first; they are disarmed."""
        due: list[tuple[str, datetime]] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0].when > now:
                return due
            entry = heapq.heappop(self._heap)
            del self._armed[entry.task_id]
            self._generation[entry.task_id] = entry.generation + 1
            due.append((entry.task_id, entry.when))

    def _live(self, entry: _Entry) -> bool:
        return self._generation.get(entry.task_id) == entry.generation and (
            entry.task_id in self._armed
        )

    def _drop_stale(self) -> None:
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._armed):
            self._heap = [entry for entry in self._heap if self._live(entry)]
            heapq.heapify(self._heap)
