"""Following one run's logs: history, then live batches, into a ``LogDocument``.

One ordered push consumer on the run's subject (the server pushes the stored batches without a
request per message, so the history replays in one pass). The callback decodes a ``LogBatch``
and appends its lines to the document's pending list, nothing more; the log view drains that
list from its own timer. After a reconnect the tail resumes from the last stream sequence it
saw, and the per-line sequence drops replays.

Opened by ``console.feed.open_log`` for ``console.screens.run_logs``. next: ``console.logdoc``.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from broker import names
from broker.models import LogBatch, decode
from console.logdoc import LogDocument
from console.turns import Turns

log = logging.getLogger(__name__)

INACTIVE_THRESHOLD_S = 60.0
# A burst of tens of thousands of lines per second must never hit nats-py's pending limits
# (which drop messages): batches are up to 256 KiB, so allow plenty.
PENDING_BYTES = 512 * 1024 * 1024


class LogTail:
    def __init__(self, task_id: str, run_id: str, doc: LogDocument) -> None:
        self.task_id = task_id
        self.run_id = run_id
        self.doc = doc
        self.subject = names.logs_subject(task_id, run_id)
        self.last_seq = 0  # stream sequence of the last batch received
        self.caught_up = False  # history replayed
        self.bad_batches = 0
        self._sub: JetStreamContext.PushSubscription | None = None
        self._turns = Turns()

    async def start(self, js: JetStreamContext) -> None:
        """Subscribe (again): from the first batch, or after the last one received."""
        await self.stop()
        if self.last_seq:
            config = js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.last_seq + 1,
            )
        else:
            config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL)
        self._sub = sub = await js.subscribe(
            self.subject,
            stream=names.LOGS_STREAM,
            cb=self._on_msg,
            ordered_consumer=True,
            config=config,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=PENDING_BYTES,
        )
        if not self.caught_up:
            info = await sub.consumer_info()
            if info.num_pending == 0 and sub.delivered == 0:
                self.caught_up = True

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        try:
            batch = decode(LogBatch, msg.data)
        except msgspec.DecodeError:
            self.bad_batches += 1
            log.warning("undecodable log batch at %s seq %s", self.subject, seq)
            return
        self.doc.push(batch.lines, eof=batch.eof)
        if meta.num_pending == 0:
            self.caught_up = True
        await self._turns.take()
