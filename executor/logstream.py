"""One run's output on the bus: pipes read in chunks, split into lines, numbered, batched.

The executor reads the child's stdout and stderr pipes in chunks (``PipeReader``, on the event
loop's reader callbacks; split by hand, an order of magnitude cheaper per line than
``readline``), keeps the two streams apart, stamps and numbers every
line (per run, from 1), and publishes ``LogBatch``es in order from a single flusher: a batch
goes out once it has ``batch_lines`` lines or ``linger_s`` after its first line, so a quiet
task's line reaches readers within milliseconds and a chatty one's lines share messages.
Lines longer than ``names.LOG_LINE_MAX_CHARS`` are split, never dropped; past the per-run byte
cap output is discarded and the log says so. The last batch has ``eof=True``.

A batch's de-duplication id is ``<subject>#<writer>#<first seq>``, the writer naming the
executor and attempt, so a stale executor retrying old batches never collides with (and so
never silently drops) its replacement's lines, which continue the same numbering. Once the run
is no longer this executor's (``owned()`` turns false) nothing more is published. While NATS is
away a batch is retried for ``PUBLISH_GIVE_UP_S``; once ``close()`` is called everything left
must be stored within ``FINAL_PUBLISH_GIVE_UP_S``, so shutdown always finishes.

Trace "a print() reaching the console and the SDK", one hop per module, each docstring naming
the next (the pipes are opened by ``executor.runner`` and passed to the launcher as fds 1/2):

1. ``executor.logstream`` (here): pipe → lines → ``LogBatch`` on
   ``names.logs_subject(task, run)`` in the ``names.LOGS_STREAM`` stream;
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
        self._subject = names.logs_subject(task_id, run_id)
        self._seq = first_seq - 1
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._batch_lines = batch_lines
        self._pending: list[LogLine] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self.output_bytes = 0  # user output seen (stdout + stderr)
        self.dropped_bytes = 0
        self._said_cap = False
        self.published_lines = 0
        # Masks connection secrets out of lines (executor.secrets.attach).
        self.mask: Callable[[list[str]], list[str]] | None = None

    @property
    def last_seq(self) -> int:
        return self._seq

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

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
        for line in lines:
            for piece in split_long(line):
                self._seq += 1
                self._pending.append(LogLine(seq=self._seq, ts=ts, stream=stream, text=piece))
        if lines:
            self._wake.set()

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
    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            if not self._closing and len(self._pending) < self._batch_lines:
                await asyncio.sleep(self._linger_s)
            self._wake.clear()
            if self._closing:
                return  # close() publishes the rest, the last batch with eof
            await self._publish_pending(eof=False)

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
        while True:
            if not self._owned():
                self._abandon(batch, "the run is no longer this executor's")
                return
            try:
                await self._bus.js.publish(
                    self._subject, data, timeout=PUBLISH_TIMEOUT_S, headers={names.MSG_ID: msg_id}
                )
                return
            except (nats.errors.Error, TimeoutError) as exc:
                now = loop.time()
                deadline = min(give_up, self._close_deadline or give_up)
                if now + delay > deadline:
                    self._abandon(batch, f"NATS did not store it ({exc})")
                    return
                log.warning("log publish for %s failed (%s); retrying", self._subject, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _abandon(self, batch: LogBatch, why: str) -> None:
        if not self.abandoned_lines:
            log.error("dropping log lines of %s: %s", self._subject, why)
        self.abandoned_lines += len(batch.lines)

    async def close(self) -> None:
        """Publish everything left, the last batch with ``eof=True``; returns once stored."""
        if self.dropped_bytes:
            self.taskbus(f"{self.dropped_bytes} bytes of output were dropped past the log cap")
        self._closing = True
        self._close_deadline = asyncio.get_running_loop().time() + FINAL_PUBLISH_GIVE_UP_S
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
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
