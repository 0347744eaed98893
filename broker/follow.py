"""Following a stream: one resumable ordered consumer behind every reader of the bus.

A ``Follow`` reads one subject filter of one stream (a KV bucket's keys, a run's log subject)
through an ordered push consumer: the server pushes what is stored and then every new message,
without a request per message. Around nats-py's ordered consumer (which already recreates
itself on a sequence gap or when its idle heartbeats stop) it adds what every reader needs:

- a deliver policy: ``Deliver.ALL``, ``Deliver.LAST_PER_SUBJECT`` (a KV bucket's current
  records), or from a stream sequence (``start_seq``);
- resume by stream sequence: ``start()`` again (by hand, or on the bus's reconnect callback
  when given a ``bus``) recreates the consumer from the last sequence seen + 1, so a reader
  never replays a bucket after a server restart; replays are dropped by sequence; if the
  server came back with an older store (its last sequence is behind ours) the reader starts
  over (``on_reset``);
- deletions once: a KV delete or purge and the server's TTL expiry marker all arrive as an
  entry with ``value`` None;
- "loaded": the history present at the start has been delivered (``on_loaded``, and in the
  iterator face an entry whose ``caught_up`` is true).

Two faces. The callback face (``on_entry``) costs one O(1) call per message on the loop, and
with ``turns_budget_s`` shares that loop with a UI (``broker.turns``): the console's tables and
log view, the scheduler. The iterator face (``async with Follow(...) as f: async for entry in
f``, or ``await f.next(timeout)``) queues ``Entry``s: the SDK's waits and log follows,
``broker.store.watch`` and ``scan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from broker import names
from broker.turns import Turns

if TYPE_CHECKING:
    from broker import tokens
    from broker.connection import Bus

log = logging.getLogger(__name__)

# An idle consumer is removed by the server after this long (a reader recreates it on resume).
INACTIVE_THRESHOLD_S = 300.0
IDLE_HEARTBEAT_S = 5.0  # nats-py's default for ordered consumers: two missed ones reset it
RESUME_RETRY_S = 0.25  # after a reconnect, JetStream may not answer for a moment
# nats-py drops messages past a subscription's pending limits: a replay of 100,000 records or
# a burst of log batches (up to 256 KiB each) must never hit them.
PENDING_MSGS = 2_000_000
PENDING_BYTES = 512 * 1024 * 1024


class Deliver(enum.Enum):
    ALL = js_api.DeliverPolicy.ALL
    LAST_PER_SUBJECT = js_api.DeliverPolicy.LAST_PER_SUBJECT


class Entry(NamedTuple):
    key: str  # the subject after the follow's prefix (a KV key)
    value: bytes | None  # None: deleted, purged or expired
    seq: int  # stream sequence; 0 for the caught-up marker

    @property
    def caught_up(self) -> bool:
        return self.seq == 0


CAUGHT_UP = Entry("", None, 0)
EntryCallback = Callable[[str, bytes | None], None]


class _End(NamedTuple):
    error: BaseException | None


def inspects_streams(creds: tokens.Creds | None) -> bool:
    """Whether a credential may ask for a stream's info or a message by its sequence. Users,
    operators and runs may not (either reaches every workspace's subjects): their follows
    resume by sequence without checking that the stream did not go back in time
    (``check_reset``), and ``broker.logs.tail`` reads through a filtered consumer."""
    return creds is None or creds.role not in ("user", "operator", "run")


class Follow:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        *,
        prefix: str = "",
        deliver: Deliver = Deliver.ALL,
        start_seq: int = 0,
        on_entry: EntryCallback | None = None,
        on_loaded: Callable[[], None] | None = None,
        on_reset: Callable[[], None] | None = None,
        bus: Bus | None = None,
        until_loaded: bool = False,
        named: str = "follow",
        flow_control: bool = True,
        inactive_threshold_s: float = INACTIVE_THRESHOLD_S,
        pending_bytes: int = PENDING_BYTES,
        turns_budget_s: float | None = None,
        check_reset: bool | None = None,
    ) -> None:
        """``prefix``: cut from each subject to make the entry's key. ``bus``: resume on its
        reconnects by itself. ``until_loaded``: the iterator ends once the history is in.
        ``check_reset``: on a resume, check that the stream did not go back in time (default:
        where the bus's credential may, ``inspects_streams``). ``named``: the consumer's name
        is ``<named>_<uuid>``; a named consumer puts its filter in the API subject, so server
        permissions can allow reading some keys only (a user the keys of its workspaces:
        ``broker.roles``)."""
        self.js = js
        self.stream = stream
        self.subject = subject
        self.deliver = deliver
        self.last_seq = max(0, start_seq - 1)
        self.loaded = False
        self._prefix = len(prefix)
        self._on_entry = on_entry if on_entry is not None else self._enqueue
        self._on_loaded = on_loaded
        self._on_reset = on_reset
        self._bus = bus
        self._until_loaded = until_loaded
        self._named = named
        self._flow_control = flow_control
        self._inactive_threshold_s = inactive_threshold_s
        self._pending_bytes = pending_bytes
        self._turns = Turns(turns_budget_s) if turns_budget_s is not None else None
        self._check_reset = check_reset
        self._queue: asyncio.Queue[Entry | _End] = asyncio.Queue()
        self._sub: JetStreamContext.PushSubscription | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._closed = False
        self._started = False  # a consumer was created once: a start now is a resume
        self._resume_hook: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def bucket(cls, js: JetStreamContext, bucket: str, keys: str = ">", **options: Any) -> Follow:
        """A KV bucket's current records (the last per key) matching ``keys``, then changes;
        entries are keyed by the KV key (``deliver`` may ask for every revision instead)."""
        options.setdefault("deliver", Deliver.LAST_PER_SUBJECT)
        return cls(
            js,
            names.kv_stream(bucket),
            names.kv_subject(bucket, keys),
            prefix=names.kv_subject(bucket, ""),
            **options,
        )

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the consumer (again): from the policy's start, or after the last sequence."""
        await self._unsubscribe()
        if self.last_seq and self._started and self._may_inspect_stream():
            stream = await self.js.stream_info(self.stream)
            if stream.state.last_seq < self.last_seq:
                log.warning("stream %s went back in time: reading it again", self.stream)
                self.last_seq = 0
                self.loaded = False
                if self._on_reset is not None:
                    self._on_reset()
        config = js_api.ConsumerConfig(
            deliver_subject=self.js._nc.new_inbox(),
            filter_subject=self.subject,
            ack_policy=js_api.AckPolicy.NONE,
            max_deliver=1,
            num_replicas=1,
            mem_storage=True,
            inactive_threshold=self._inactive_threshold_s,
        )
        if self._flow_control:
            config.flow_control = True
            config.idle_heartbeat = IDLE_HEARTBEAT_S
        if self.last_seq:
            config.deliver_policy = js_api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.last_seq + 1
        else:
            config.deliver_policy = self.deliver.value
        config.name = self._consumer_name()
        info = await self.js._jsm.add_consumer(self.stream, config)
        self._sub = await self.js.subscribe_bind(
            self.stream,
            config,
            info.name,
            cb=self._on_msg,
            ordered_consumer=True,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=self._pending_bytes,
        )
        self._renames_on_reset(self._sub)
        self._started = True
        if not info.num_pending:
            self._set_loaded()  # nothing stored to replay: what comes now is live

    def _consumer_name(self) -> str:
        return f"{self._named}_{uuid.uuid4().hex}"

    def _renames_on_reset(self, sub: JetStreamContext.PushSubscription) -> None:
        """nats-py's ordered consumer recreates itself after a sequence gap with the same
        config, name included; the server refuses a second consumer of that name with another
        start, and the follow would stall. Each recreation gets a fresh name."""
        state = sub._sub._jsi
        if state is None:
            return
        recreate = state.recreate_consumer

        async def renamed() -> None:
            state._ccreq.name = self._consumer_name()
            await recreate()

        state.recreate_consumer = renamed  # type: ignore[method-assign]

    def _may_inspect_stream(self) -> bool:
        if self._check_reset is not None:
            return self._check_reset
        return self._bus is None or inspects_streams(self._bus.creds)

    async def stop(self) -> None:
        self._closed = True
        hook, self._resume_hook = self._resume_hook, None
        if self._bus is not None and hook in self._bus.on_reconnect:
            self._bus.on_reconnect.remove(hook)
        if self._resuming is not None:
            self._resuming.cancel()
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await sub.unsubscribe()

    # --- resuming after a reconnect -----------------------------------------------------------
    async def _reconnected(self) -> None:
        # Not inside nats-py's reconnect callback: the JetStream calls need its read loop.
        if self._resuming is None or self._resuming.done():
            self._resuming = asyncio.create_task(self._resume())

    async def _resume(self) -> None:
        bus = self._bus
        while bus is not None and bus.connected and not self._closed:
            try:
                await self.start()
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("follow of %s not ready again yet (%s)", self.subject, exc)
                await asyncio.sleep(RESUME_RETRY_S)
                continue
            except Exception as exc:  # e.g. the stream is gone: the iterator says so
                self._queue.put_nowait(_End(exc))
            return

    # --- messages -----------------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        if seq <= self.last_seq:
            return  # replayed after a resubscribe
        self.last_seq = seq
        value: bytes | None = msg.data or None
        headers = msg.headers
        if headers and (
            headers.get(names.KV_OPERATION) in names.KV_REMOVALS or names.MARKER_REASON in headers
        ):
            value = None
        try:
            self._on_entry(msg.subject[self._prefix :], value)
        except Exception:  # one bad record must not stop the follow
            log.exception("cannot apply %s from %s", msg.subject, self.stream)
        if not self.loaded and meta.num_pending == 0:
            self._set_loaded()
        if self._turns is not None:
            await self._turns.take()

    def _set_loaded(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        if self._on_loaded is not None:
            self._on_loaded()
        if self._on_entry == self._enqueue:
            self._queue.put_nowait(CAUGHT_UP)
            if self._until_loaded:
                self._queue.put_nowait(_End(None))

    # --- the iterator face --------------------------------------------------------------------
    def _enqueue(self, key: str, value: bytes | None) -> None:
        self._queue.put_nowait(Entry(key, value, self.last_seq))

    async def open(self) -> None:
        """``start()``, and with a bus resume on its reconnects until ``stop()``; may be
        called again after a failed start."""
        self._closed = False
        if self._bus is not None and self._resume_hook is None:
            self._resume_hook = self._reconnected
            self._bus.on_reconnect.append(self._resume_hook)
        await self.start()

    async def __aenter__(self) -> Follow:
        try:
            await self.open()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __aiter__(self) -> Follow:
        return self

    async def __anext__(self) -> Entry:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends too
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float) -> Entry | None:
        """The next entry, or None after ``timeout`` seconds without one (StopAsyncIteration
        at the end)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except TimeoutError:
            return None
