"""JetStream publishes acknowledged through one shared inbox: the hot path of every fire.

nats-py's ``js.publish`` is a request per message: a new future, an ``asyncio.wait_for`` and a
``json.loads`` into a dataclass, two of them per scheduled fire, and most of a large burst's
lag. ``Publisher`` sends each message with a reply subject under one wildcard inbox subscribed
once, matches the acknowledgement by its token and decodes it with msgspec: less than half the
CPU (``tests/bench/bench_scheduler.py`` prints the fire lag), the same guarantee (the caller
awaits the stream's ack, or gets an error or a timeout). nats-py's own ``publish_async`` has no
timeout: an ack lost in a reconnect would leave its future pending for ever.

The last hop of the trace "a cron instant becoming a run request" (listed in
``broker.scheduler.daemon``); the request's reader is ``executor.daemon``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

ACK_TIMEOUT_S = 5.0  # nats-py's JetStream default: a stream leader this slow is in trouble
# JetStream's err_codes when an expected-last-sequence check fails: the sequence is not the
# expected one (10071), or another such write to the subject is still being applied (10164,
# two writers racing on a replicated stream); nats-py maps both to KeyWrongLastSequenceError.
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
_NO_RESPONDERS = "503"


class ApiError(msgspec.Struct):
    code: int
    err_code: int = 0
    description: str = ""

    @property
    def wrong_last_sequence(self) -> bool:
        """A compare-and-set refused: the subject is not at the expected sequence."""
        return self.err_code in WRONG_LAST_SEQUENCE

    def exception(self) -> nats.js.errors.APIError:
        """nats-py's exception for this error (the class ``js.publish`` would raise)."""
        try:
            nats.js.errors.APIError.from_error(msgspec.structs.asdict(self))
        except nats.js.errors.APIError as exc:
            return exc
        raise AssertionError("from_error always raises")


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


class Publisher:
    """Pipelined JetStream publishes on one connection; ``await start()`` before use."""

    def __init__(self, nc: NATS, timeout_s: float = ACK_TIMEOUT_S) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        # Every send has the same timeout, so deadlines come in order: one timer for the
        # oldest instead of one per message (a burst's thousands of timers cost 7 % of it).
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        # nats-py re-subscribes after a reconnect, so this one subscription lasts the client.
        self._prefix = f"{self._nc.new_inbox()}."
        await self._nc.subscribe(f"{self._prefix}*", cb=self._on_ack)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str], *, check: bool = True
    ) -> PubAck:
        """Publish to a stream and wait for its acknowledgement.

        With ``check`` an error answer raises nats-py's exception for it (as ``js.publish``
        does); without, it is returned in ``PubAck.error`` for the caller to judge. No answer
        within the timeout raises ``nats.errors.TimeoutError``.
        """
        ack = await (await self.send(subject, payload, headers))
        if check and ack.error is not None:
            raise ack.error.exception()
        return ack

    async def send(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        """Publish without waiting: the future resolves to the acknowledgement (an error
        answer in ``PubAck.error``), or fails with ``nats.errors.TimeoutError``. Many sends
        then one ``gather`` keep a burst in one pipeline, without a task per message."""
        assert self._prefix, "Publisher.start() first"
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAck] = loop.create_future()
        self._waiting[token] = future
        self._deadlines.append((loop.time() + self._timeout_s, token))
        if self._sweeper is None:
            self._sweeper = loop.call_at(self._deadlines[0][0], self._sweep)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            future.cancel()
            raise
        return future

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return  # timed out already, or a duplicate answer
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            future.set_result(_decode_ack(msg.data))
        except msgspec.DecodeError as exc:
            future.set_exception(nats.errors.Error(f"undecodable JetStream ack: {exc}"))

    def _sweep(self) -> None:
        """Fail every send past its deadline still unanswered; wake again for the next."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            future = self._waiting.pop(self._deadlines.popleft()[1], None)
            if future is not None and not future.done():  # None: answered (or cancelled)
                future.set_exception(nats.errors.TimeoutError())
        self._sweeper = (
            loop.call_at(self._deadlines[0][0], self._sweep) if self._deadlines else None
        )
