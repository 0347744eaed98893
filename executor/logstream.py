"""One run's output on the bus: pipes read in chunks, split into lines, numbered, batched.

The executor reads the child's stdout and stderr pipes in chunks (``PipeReader``, on the event
loop's reader callbacks; split by hand, an order of magnitude cheaper per line than
``readline``), keeps the two streams apart, stamps and numbers every
line (per run, from 1), and publishes ``LogBatch``es in order from a single flusher: a batch
goes out once it has ``batch_lines`` lines or ``linger_s`` after its first line, so a quiet
task's line reaches readers within milliseconds and a chatty one's lines share messages.
Lines longer than ``names.LOG_LINE_MAX_CHARS`` are split, never dropped; past the per-run byte
cap output is discarded and the log says so. The last batch has ``eof=True``.

The pipes are always read, whatever NATS does, so the user process never waits on its output
for longer than the executor takes to read a chunk. While NATS does not store batches (a full
store answers nothing, or a refusal; a lost connection) lines wait in memory up to
``PENDING_MAX_BYTES``; past that they are dropped and counted, and once batches are stored
again one line in the log says how many: "N log lines dropped: the store is full" (one such
line per gap, where the gap was).

A batch's de-duplication id is ``<subject>#<writer>#<first seq>``, the writer naming the
executor and attempt, so a stale executor retrying old batches never collides with (and so
never silently drops) its replacement's lines, which continue the same numbering. Once the run
is no longer this executor's (``owned()`` turns false) nothing more is published. While NATS is
away a batch is retried for ``PUBLISH_GIVE_UP_S``; once ``close()`` is called everything left
must be stored within ``FINAL_PUBLISH_GIVE_UP_S``, so shutdown always finishes.

Trace "a print() reaching the console and the SDK", one hop per module, each docstring naming
the next (the pipes are opened by ``executor.runner`` and passed to the launcher as fds 1/2):

1. ``executor.logstream`` (here): pipe → lines → ``LogBatch`` on
   ``names.logs_subject(workspace, task, run)`` in the ``names.LOGS_STREAM`` stream;
2. ``broker.logs``: the SDK's reader, history then live lines until the ``eof`` batch;
3. ``sdk.run``: ``run.logs()`` / ``run.logs(follow=True)`` (and so ``taskbus logs -f`` in
   ``sdk.cli.commands``);
4. ``console.logtail``: the console's own reader of the same subject, into a document;
5. ``console.logdoc``: the lines in memory, drained by a timer;
6. ``console.widgets.log_view``: the widget that draws them;
7. ``console.screens.run_logs``: the screen that opens the tail (through ``console.feed``) and
   holds the view.

next: ``broker.logs`` (SDK and CLI) and ``console.logtail`` (console).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import anyio
import nats.errors

from broker import names
from broker.connection import Bus
from broker.models import LogBatch, LogLine, encode

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr", "taskbus"]
READ_CHUNK = 1 << 20
# A batch is published before its estimated size passes this (a UTF-8 char is ≤ 4 bytes).
BATCH_BUDGET = names.LOG_BATCH_MAX_BYTES // 2
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_GIVE_UP_S = 30.0  # a batch is retried this long while NATS is away
# Lines held in memory while NATS stores nothing (estimated size: text plus the line's own
# cost): a few MiB per run bounds the executor's memory under a chatty run whatever the store
# does, and still holds every line of a store that is only slow for a second or two. Past it,
# lines are dropped once the batch ahead has gone unanswered for ``PUBLISH_STALL_S`` (or
# failed); a healthy store that a fast printer outpaces for a moment only meets the hard cap.
PENDING_MAX_BYTES = 8 << 20
PENDING_HARD_MAX_BYTES = 64 << 20
PUBLISH_STALL_S = 1.0  # a healthy server answers a batch in milliseconds
LINE_COST_BYTES = 96  # a LogLine in memory beyond its text
# Lines start to be held again once this much of the limit is free: one gap marker per
# outage, not one per line that squeezes in as batches trickle out.
PENDING_RESUME_BYTES = PENDING_MAX_BYTES // 2
STORE_FULL = "the store is full"  # why lines were dropped, as the gap marker says it
FINAL_PUBLISH_GIVE_UP_S = 60.0  # from close(): what is left is retried this long in all


def split_long(text: str, limit: int = names.LOG_LINE_MAX_CHARS) -> list[str]:
    if len(text) <= limit:
        return [text]
    return [text[i : i + limit] for i in range(0, len(text), limit)]


class LineSplitter:
    """Bytes in, complete lines out; a partial line waits for the rest (up to the limit)."""

    def __init__(self, limit: int = names.LOG_LINE_MAX_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self._limit = limit

    def feed(self, data: bytes) -> list[str]:
        text = self._decoder.decode(data)
        if "\n" not in text:
            self._partial += text
            lines: list[str] = []
        else:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        if len(self._partial) > self._limit:
            pieces = split_long(self._partial, self._limit)
            self._partial = pieces.pop()
            lines.extend(pieces)
        return [line[:-1] if line.endswith("\r") else line for line in lines]

    def finish(self) -> list[str]:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [rest] if rest else []


class LogStream:
    """The numbered, batched log of one run."""

    def __init__(
        self,
        bus: Bus,
        workspace: str,
        task_id: str,
        run_id: str,
        *,
        first_seq: int = 1,
        max_bytes: int,
        linger_s: float,
        batch_lines: int,
        writer: str = "",
        owned: Callable[[], bool] = lambda: True,
    ) -> None:
        self._bus = bus
        self._writer = writer
        self._owned = owned
        self._close_deadline: float | None = None
        self.abandoned_lines = 0
        self.task_id = task_id
        self.run_id = run_id
        self._subject = names.logs_subject(names.workspace_token(workspace), task_id, run_id)
        self._seq = first_seq - 1
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._batch_lines = batch_lines
        self._pending: list[LogLine] = []
        self._pending_bytes = 0  # estimated memory of the lines in _pending
        self._gap = 0  # lines dropped since the last one stored (no room, or never stored)
        self._gap_why = ""
        self._store_trouble = ""  # why the last publish failed ("": the last one landed)
        self._sending_since: float | None = None  # loop time the batch being sent was sent
        self._wake = asyncio.Event()
        self._closing = False
        self._flushing: anyio.Event | None = None  # set once ``flush_loop`` ended
        self.output_bytes = 0  # user output seen (stdout + stderr)
        self.dropped_bytes = 0
        self._said_cap = False
        self.published_lines = 0
        # Masks connection secrets out of lines (executor.secrets.attach).
        self.mask: Callable[[list[str]], list[str]] | None = None

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def closing(self) -> bool:
        """``close()`` was called."""
        return self._closing

    # --- adding lines ------------------------------------------------------------------------
    def add(self, stream: Stream, lines: list[str], ts: datetime | None = None) -> None:
        if not lines:
            return
        if self.mask is not None:  # before anything is stored
            lines = self.mask(lines)
        ts = ts or datetime.now(UTC)
        if stream != "taskbus":
            size = sum(len(line) + 1 for line in lines)
            if self.output_bytes + size <= self._max_bytes:
                self.output_bytes += size
            else:
                self._append(stream, self._cap(lines), ts)
                if not self._said_cap:
                    self._said_cap = True
                    self.taskbus(
                        f"output passed this run's log cap of {self._max_bytes} bytes; further "
                        f"output is dropped (the executor's --max-log-bytes)"
                    )
                return
        self._append(stream, lines, ts)

    def _append(self, stream: Stream, lines: list[str], ts: datetime) -> None:
        held = stream == "taskbus"  # the executor's own few lines always wait their turn
        for line in lines:
            for piece in split_long(line):
                cost = len(piece) + LINE_COST_BYTES
                if self._gap or self._pending_bytes + cost > PENDING_MAX_BYTES:  # NATS behind
                    if not held and not self._room_for(cost):
                        self._drop(1, self._store_trouble or self._unanswered())
                        continue
                    if self._gap:  # the gap so far goes before the executor's own line
                        self._say_gap()
                self._seq += 1
                self._pending.append(LogLine(seq=self._seq, ts=ts, stream=stream, text=piece))
                self._pending_bytes += cost
        if lines:
            self._wake.set()

    def _room_for(self, cost: int) -> bool:
        """Whether a user line may wait in memory (past the limit while NATS stores nothing:
        dropped, until half the limit is free)."""
        size = self._pending_bytes + cost
        if self._gap:
            if size > PENDING_RESUME_BYTES:
                return False
            self._say_gap()
            return True
        return size <= PENDING_HARD_MAX_BYTES and not (self._store_trouble or self._stalled())

    def _stalled(self) -> bool:
        """The batch being sent has had no answer for longer than a healthy server takes."""
        since = self._sending_since
        return since is not None and asyncio.get_running_loop().time() - since > PUBLISH_STALL_S

    def _drop(self, count: int, why: str) -> None:
        if not self._gap:
            log.warning("log lines of %s are dropped: %s", self._subject, why)
            self._gap_why = why
        elif why == STORE_FULL:  # the cause that says most (a reconnect may end the outage)
            self._gap_why = why
        self._gap += count

    def _say_gap(self) -> None:
        """The one line that stands for the lines dropped since the last one kept."""
        count, self._gap = self._gap, 0
        log.warning("%d log lines of %s were dropped: %s", count, self._subject, self._gap_why)
        self._seq += 1
        text = f"taskbus: {count} log lines dropped: {self._gap_why}"
        self._pending.append(
            LogLine(seq=self._seq, ts=datetime.now(UTC), stream="taskbus", text=text)
        )
        self._pending_bytes += len(text) + LINE_COST_BYTES

    def _cap(self, lines: list[str]) -> list[str]:
        """The lines that still fit under the byte cap; the first drop is said in the log."""
        kept: list[str] = []
        for line in lines:
            size = len(line) + 1
            if not self.dropped_bytes and self.output_bytes + size <= self._max_bytes:
                kept.append(line)
                self.output_bytes += size
            else:
                self.dropped_bytes += size
        return kept

    def taskbus(self, text: str) -> None:
        self.add("taskbus", [f"taskbus: {text}"])

    # --- publishing --------------------------------------------------------------------------
    async def flush_loop(self) -> None:
        """Publish batches as lines come, until ``close()`` (a task of the run's task group,
        which cancels it if the run ends another way)."""
        stopped = self._flushing = anyio.Event()
        try:
            while not self._closing:
                await self._wake.wait()
                if not self._closing and len(self._pending) < self._batch_lines:
                    await anyio.sleep(self._linger_s)
                self._wake.clear()
                if self._closing:
                    return  # close() publishes the rest, the last batch with eof
                await self._publish_pending(eof=False)
        finally:
            stopped.set()

    async def _publish_pending(self, *, eof: bool) -> None:
        while True:
            count = budget = 0
            for line in self._pending:
                if count >= self._batch_lines or budget >= BATCH_BUDGET:
                    break
                count += 1
                budget += len(line.text) * (1 if line.text.isascii() else 4) + 48
            batch = self._pending[:count]
            del self._pending[:count]
            self._pending_bytes -= sum(len(line.text) + LINE_COST_BYTES for line in batch)
            last = eof and not self._pending
            if batch or last:
                await self._send(
                    LogBatch(task_id=self.task_id, run_id=self.run_id, lines=batch, eof=last)
                )
                self.published_lines += len(batch)
            if not self._pending:
                return

    async def _send(self, batch: LogBatch) -> None:
        data = encode(batch)
        first = batch.lines[0].seq if batch.lines else self._seq + 1
        msg_id = f"{self._subject}#{self._writer}#{first}{'#eof' if batch.eof else ''}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (FINAL_PUBLISH_GIVE_UP_S if batch.eof else PUBLISH_GIVE_UP_S)
        delay = 0.05
        self._sending_since = loop.time()
        while True:
            if not self._owned():
                self._abandon(batch, "the run is no longer this executor's")
                return
            try:
                await self._bus.js.publish(
                    self._subject, data, timeout=PUBLISH_TIMEOUT_S, headers={names.MSG_ID: msg_id}
                )
                self._store_trouble = ""
                self._sending_since = None
                return
            except (nats.errors.Error, TimeoutError) as exc:
                self._store_trouble = self._trouble(exc)
                now = loop.time()
                deadline = min(give_up, self._close_deadline or give_up)
                if now + delay > deadline:
                    self._sending_since = None
                    self._abandon(batch, f"NATS did not store it ({exc})")
                    return
                log.warning("log publish for %s failed (%s); retrying", self._subject, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _trouble(self, exc: Exception) -> str:
        """Why NATS did not store a batch, as the gap marker says it. A connected server that
        does not answer a publish, or refuses it for want of space, has a full store (a
        nats-server whose disk filled keeps the stream's write error and answers nothing)."""
        text = str(exc).lower()
        if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
            return self._unanswered()
        if any(word in text for word in ("insufficient", "storage", "space", "resources")):
            return STORE_FULL
        return f"NATS did not store them ({exc})"

    def _unanswered(self) -> str:
        """Why lines pile up while the batch ahead of them has had no answer yet."""
        return STORE_FULL if self._bus.nc.is_connected else "NATS was unreachable"

    def _abandon(self, batch: LogBatch, why: str) -> None:
        if not self.abandoned_lines:
            log.error("dropping log lines of %s: %s", self._subject, why)
        self.abandoned_lines += len(batch.lines)
        if self._owned() and batch.lines:  # the next gap marker counts them too
            self._drop(len(batch.lines), self._store_trouble or why)

    async def close(self) -> None:
        """Publish everything left, the last batch with ``eof=True``; returns once stored."""
        if self.dropped_bytes:
            self.taskbus(f"{self.dropped_bytes} bytes of output were dropped past the log cap")
        if self._gap:
            self._say_gap()
        self._closing = True
        self._close_deadline = asyncio.get_running_loop().time() + FINAL_PUBLISH_GIVE_UP_S
        self._wake.set()
        if self._flushing is not None:  # a batch it is sending lands first: lines stay in order
            await self._flushing.wait()
        await self._publish_pending(eof=True)


class PipeReader:
    """Reads one pipe without blocking the loop; feeds complete lines to a callback."""

    def __init__(self, fd: int, on_lines: Callable[[list[str]], None]) -> None:
        self.fd = fd
        self._on_lines = on_lines
        self._splitter = LineSplitter()
        self.closed = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._on_lines(self._splitter.feed(data))
            return
        self.close()

    def close(self) -> None:
        """Stop reading (EOF, or the run is over and a leftover process still holds the pipe)."""
        if self.closed.done():
            return
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
        self._on_lines(self._splitter.finish())
        self.closed.set_result(None)
