"""Reading a run's log lines: history, then live lines until the run's last batch.

Executors publish ``LogBatch``es on ``taskbus.logs.<workspace>.<task_id>.<run_id>``
(``executor.logstream``);
each line carries a per-run sequence, its stream and its timestamp. Readers use one ordered
push consumer (from the start of the subject: the server pushes the stored batches without a
request per message, so a run's history replays in one pass): a ``broker.follow.Follow``,
which resumes after a reconnect from the last batch it saw.

next: ``sdk.run`` (``AsyncTaskRun.logs``, which the CLI's ``logs -f`` iterates). The console
reads the same subject through the same ``Follow`` (``console.logtail``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec
import nats.errors
from nats.js.errors import NotFoundError

from broker import names, store
from broker.connection import Bus
from broker.errors import LogsUnavailable
from broker.follow import Follow, inspects_streams
from broker.models import LogBatch, LogLine, RunRecord, decode
from broker.status import RUN_TERMINAL

log = logging.getLogger(__name__)

# How long a follower waits for the final batch once the run record says it ended: an
# executor that died mid-run never sends one.
EOF_GRACE_S = 2.0
POLL_S = 1.0


def _stream_gone() -> LogsUnavailable:
    return LogsUnavailable(
        f"The server has no {names.LOGS_STREAM} stream (it was deleted), so the run's log lines "
        f"are gone. The next provisioning (a `taskbus up` or `taskbus server` start) creates it "
        f"again for new runs."
    )


def format_line(line: LogLine) -> str:
    """``"<ISO-8601 time with zone> <message>"`` (the SDK's and CLI's line format)."""
    return f"{line.ts.isoformat()} {line.text}"


def _subject(run: RunRecord) -> str:
    return names.logs_subject(names.workspace_token(run.workspace), run.task_id, run.run_id)


async def _batches(
    bus: Bus, run: RunRecord, *, follow: bool, start_seq: int | None = None
) -> AsyncIterator[LogBatch]:
    subject = _subject(run)
    reader = Follow(
        bus.js,
        names.LOGS_STREAM,
        subject,
        start_seq=start_seq or 0,
        bus=bus if follow else None,
        until_loaded=not follow,
        inactive_threshold_s=60.0,
    )
    try:
        await reader.open()
    except NotFoundError:  # no stream holds the subject
        await reader.stop()
        raise _stream_gone() from None
    try:
        ended_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                entry = await reader.next(POLL_S if follow else 5.0)
            except StopAsyncIteration:
                return  # all stored batches read (not following)
            if entry is None:
                if not follow:
                    return
                if ended_at is None:
                    current = await store.get(bus.runs, run.key, RunRecord)
                    if current is not None and current[0].status in RUN_TERMINAL:
                        ended_at = loop.time()
                elif loop.time() - ended_at > EOF_GRACE_S:
                    return
                continue
            if entry.caught_up:
                continue
            try:
                batch: LogBatch | None = decode(LogBatch, entry.value or b"")
            except msgspec.DecodeError as exc:  # not ours (published by hand?): skip it
                log.warning("skipping an undecodable log batch on %s: %s", subject, exc)
                batch = None
            if batch is not None:
                yield batch
                if batch.eof:
                    return
    finally:
        await reader.stop()


async def read(bus: Bus, run: RunRecord) -> list[LogLine]:
    """Every stored line of a run, in order."""
    lines: list[LogLine] = []
    async for batch in _batches(bus, run, follow=False):
        lines.extend(batch.lines)
    return lines


async def follow(bus: Bus, run: RunRecord) -> AsyncIterator[LogLine]:
    """History first, then live lines, until the run's last batch (or the run ended and no
    last batch came within ``EOF_GRACE_S``: its executor was lost)."""
    async for batch in _batches(bus, run, follow=True):
        for line in batch.lines:
            yield line


async def tail(bus: Bus, run: RunRecord, limit: int) -> list[LogLine]:
    """The last ``limit`` lines, without reading a long log from its start.

    Lines carry a per-run sequence and batches are stored in order, so the last batch says how
    many lines there are and a binary search over the stream (direct gets of "the next batch
    of this run from stream position p", O(log n)) finds the batch holding the first wanted
    line; only the rest is read.
    """
    if limit <= 0:
        return []
    subject = _subject(run)
    last = await _batch_at(bus, subject, None)
    if last is None:
        return []
    last_seq, last_batch = last
    if not last_batch.lines:  # an empty last batch does not say how many lines there are
        return (await read(bus, run))[-limit:]
    wanted = last_batch.lines[-1].seq - limit + 1
    first = await _batch_at(bus, subject, 1)
    assert first is not None  # the subject has a last batch, so it has a first one
    low, high = first[0], last_seq  # low: a batch starting at or before the wanted line
    while low < high:
        middle = (low + high + 1) // 2
        found = await _batch_at(bus, subject, middle)
        if found is not None and found[1].lines and found[1].lines[0].seq <= wanted:
            low = found[0]
        else:
            high = middle - 1
    lines: list[LogLine] = []
    async for batch in _batches(bus, run, follow=False, start_seq=low):
        lines.extend(line for line in batch.lines if line.seq >= wanted)
    return lines[-limit:]


async def _batch_at(bus: Bus, subject: str, seq: int | None) -> tuple[int, LogBatch] | None:
    """The run's last batch (``seq`` None: a direct get by subject), or its first batch at
    stream position >= seq: a direct get by position where the credential may (it names no
    subject, so server permissions cannot scope it to a user's workspaces), else a consumer
    filtered on the run's subject (a few milliseconds more)."""
    try:
        if seq is None or inspects_streams(bus.creds):
            msg = await bus.js.get_msg(
                names.LOGS_STREAM, seq=seq, subject=subject, next=seq is not None, direct=True
            )
            if msg.seq is None or msg.data is None:
                return None
            found_seq, data = msg.seq, msg.data
        else:
            reader = Follow(
                bus.js,
                names.LOGS_STREAM,
                subject,
                start_seq=seq,
                named="tail",
                until_loaded=True,
                flow_control=False,
                inactive_threshold_s=10.0,
            )
            async with reader:
                try:
                    entry = await reader.next(5.0)
                except StopAsyncIteration:
                    return None
            if entry is None or entry.caught_up or entry.value is None:
                return None
            found_seq, data = entry.seq, entry.value
    except NotFoundError:
        return None
    except nats.errors.NoRespondersError:  # direct gets of a stream that does not exist
        raise _stream_gone() from None
    try:
        return found_seq, decode(LogBatch, data)
    except msgspec.DecodeError:
        return found_seq, LogBatch(task_id="", run_id="", lines=[])
