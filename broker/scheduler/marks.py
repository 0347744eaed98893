"""How far the schedulers got: one watermark in the ``scheduler`` bucket.

Every cron instant up to the watermark has been handled for every task (fired, or recorded as
missed or skipped). After a restart, a task's instants after ``max(watermark, its creation or
resume)`` are due and follow its missed policy. The watermark only moves forward: writes are
compare-and-set on the KV revision, and a writer that is behind a peer (a second scheduler)
adopts the peer's value. It is stored as a ``SchedulerMark`` whose ``task_id`` is ``"*"``.

Why one mark and not one per task: a per-task mark costs a KV write per fire (a third of the
fire's bus traffic; 10,000 writes after a burst of 10,000 every-minute tasks), while one
watermark costs one write per flush interval whatever the number of tasks, and means the same
thing. A watermark that lags after a crash only costs a few refused ``create()`` calls on
restart, never a duplicate run: run ids are derived from the task and the instant.
"""

from __future__ import annotations

import logging
from datetime import datetime

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker import names, store
from broker.models import SchedulerMark, encode

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 20
ALL_TASKS = "*"


class Watermark:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._written: datetime | None = None
        self._revision: int | None = None

    @property
    def value(self) -> datetime | None:
        """The last watermark read or written (None on a fresh bus)."""
        return self._written

    async def load(self) -> datetime | None:
        found = await store.get(self._kv, names.SCHEDULER_WATERMARK, SchedulerMark)
        if found is not None:
            mark, self._revision = found
            self._written = mark.last_instant
        return self._written

    async def advance(self, instant: datetime) -> None:
        """Move the watermark to ``instant`` unless it (or a peer's) is already further."""
        for _ in range(CAS_ATTEMPTS):
            if self._written is not None and instant <= self._written:
                return
            value = encode(SchedulerMark(task_id=ALL_TASKS, last_instant=instant))
            try:
                if self._revision is None:
                    self._revision = await self._kv.create(names.SCHEDULER_WATERMARK, value)
                else:
                    self._revision = await self._kv.update(
                        names.SCHEDULER_WATERMARK, value, last=self._revision
                    )
            except KeyWrongLastSequenceError:  # a peer wrote it: read theirs, then retry
                found = await store.get(self._kv, names.SCHEDULER_WATERMARK, SchedulerMark)
                if found is None:
                    self._revision = None
                else:
                    theirs, self._revision = found
                    if self._written is None or theirs.last_instant > self._written:
                        self._written = theirs.last_instant
                continue
            self._written = instant
            return
        raise RuntimeError("gave up writing the scheduler watermark")
