"""Reading a run's log lines: history, then live lines until the run's last batch.

Executors publish ``LogBatch``es on ``taskbus.logs.<task_id>.<run_id>``; each line carries a
per-run sequence, its stream and its timestamp. Readers use one ordered push consumer from the
start of the subject (replaying 3,000 lines takes ~20 ms).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec
import nats.errors
from nats.js import api as js_api

from broker import names, store
from broker.connection import Bus
from broker.models import LogBatch, LogLine, RunRecord, decode
from broker.status import RUN_TERMINAL

log = logging.getLogger(__name__)

# How long a follower waits for the final batch once the run record says it ended: an
# executor that died mid-run never sends one.
EOF_GRACE_S = 2.0
POLL_S = 1.0


def format_line(line: LogLine) -> str:
    """``"<ISO-8601 time with zone> <message>"`` (the SDK's and CLI's line format)."""
    return f"{line.ts.isoformat()} {line.text}"


async def _batches(bus: Bus, task_id: str, run_id: str, *, follow: bool) -> AsyncIterator[LogBatch]:
    subject = names.logs_subject(task_id, run_id)
    sub = await bus.js.subscribe(
        subject,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.ALL,
        inactive_threshold=60.0,
    )
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        if not follow and not info.num_pending and not sub.pending_msgs and not delivered:
            return  # nothing stored, and nothing to wait for (none sent and still in flight)
        ended_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await sub.next_msg(timeout=POLL_S if follow else 5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                if not follow:
                    return
                if ended_at is None:
                    run = await store.get(bus.runs, names.run_key(task_id, run_id), RunRecord)
                    if run is not None and run[0].status in RUN_TERMINAL:
                        ended_at = loop.time()
                elif loop.time() - ended_at > EOF_GRACE_S:
                    return
                continue
            try:
                batch: LogBatch | None = decode(LogBatch, msg.data)
            except msgspec.DecodeError as exc:  # not ours (published by hand?): skip it
                log.warning("skipping an undecodable log batch on %s: %s", subject, exc)
                batch = None
            if batch is not None:
                yield batch
                if batch.eof:
                    return
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.ConnectionClosedError:
            pass


async def read(bus: Bus, task_id: str, run_id: str) -> list[LogLine]:
    """Every stored line of a run, in order."""
    lines: list[LogLine] = []
    async for batch in _batches(bus, task_id, run_id, follow=False):
        lines.extend(batch.lines)
    return lines


async def follow(bus: Bus, task_id: str, run_id: str) -> AsyncIterator[LogLine]:
    """History first, then live lines, until the run's last batch (or the run ended and no
    last batch came within ``EOF_GRACE_S``: its executor was lost)."""
    async for batch in _batches(bus, task_id, run_id, follow=True):
        for line in batch.lines:
            yield line
