"""Following one run's logs: history, then live batches, into a ``LogDocument``.

A ``broker.follow.Follow`` on the run's subject (one ordered push consumer: the server pushes
the stored batches without a request per message, so the history replays in one pass). The
callback decodes a ``LogBatch`` and appends its lines to the document's pending list, nothing
more; the log view drains that list from its own timer. After a reconnect the tail resumes
from the last stream sequence it saw, and the per-line sequence drops replays.

Opened by ``console.feed.open_log`` for ``console.screens.run_logs``. next: ``console.logdoc``.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext

from broker import names
from broker.follow import Follow
from broker.models import LogBatch, decode
from broker.turns import BUDGET_S
from console.logdoc import LogDocument

log = logging.getLogger(__name__)

INACTIVE_THRESHOLD_S = 60.0


class LogTail:
    def __init__(
        self, task_key: str, run_id: str, doc: LogDocument, *, check_reset: bool = True
    ) -> None:
        """``task_key``: the task's ``TaskRecord.key`` (``<workspace>.<task_id>``);
        ``check_reset``: as ``Follow``'s."""
        self._check_reset = check_reset
        workspace, _, task_id = task_key.partition(".")
        self.task_id = task_id
        self.run_id = run_id
        self.doc = doc
        self.subject = names.logs_subject(workspace, task_id, run_id)
        self.bad_batches = 0
        self._follow: Follow | None = None

    @property
    def caught_up(self) -> bool:
        """The history is replayed."""
        return self._follow is not None and self._follow.loaded

    async def start(self, js: JetStreamContext) -> None:
        """Subscribe (again): from the first batch, or after the last one received."""
        if self._follow is None:
            self._follow = Follow(
                js,
                names.LOGS_STREAM,
                self.subject,
                on_entry=self._on_batch,
                inactive_threshold_s=INACTIVE_THRESHOLD_S,
                turns_budget_s=BUDGET_S,
                check_reset=self._check_reset,
            )
        await self._follow.start()

    async def stop(self) -> None:
        if self._follow is not None:
            await self._follow.stop()

    def _on_batch(self, _key: str, data: bytes | None) -> None:
        try:
            batch = decode(LogBatch, data or b"")
        except msgspec.DecodeError:
            self.bad_batches += 1
            log.warning("undecodable log batch at %s", self.subject)
            return
        self.doc.push(batch.lines, eof=batch.eof)
