"""Watching one KV bucket: current values, then live changes, resumable after a reconnect.

Like ``KeyValue.watch`` (an ordered push consumer delivering the last value per key), but
with a callback instead of an iterator, so each change costs one O(1) call on the UI loop,
and it remembers the last stream sequence seen: after a reconnect it resumes from there
instead of replaying 100,000 runs (a watcher must be recreated after a server restart: the
old one stays blind until nats-py notices missed heartbeats). If the server came back with an
older store, it reloads from scratch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from broker import names
from console.turns import Turns

log = logging.getLogger(__name__)

_MARKER_REASON = "Nats-Marker-Reason"  # server-placed expiry markers (nats-server 2.11+)
# An idle watch is cleaned up by the server after this long (it is recreated on reconnect).
INACTIVE_THRESHOLD_S = 300.0

EntryCallback = Callable[[str, bytes | None], None]


class BucketWatch:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        on_entry: EntryCallback,
        on_loaded: Callable[[], None],
        on_reset: Callable[[], None],
    ) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = names.kv_subject(bucket, "")
        self.on_entry = on_entry
        self.on_loaded = on_loaded
        self.on_reset = on_reset
        self.last_seq = 0
        self.loaded = False
        self._sub: JetStreamContext.PushSubscription | None = None
        self._turns = Turns()

    async def start(self) -> None:
        """Subscribe (again): from the start, or from the last sequence seen."""
        await self.stop()
        if self.last_seq:
            info = await self.js.stream_info(self.stream)
            if info.state.last_seq < self.last_seq:
                log.warning("bucket %s went back in time: reloading it", self.bucket)
                self.last_seq = 0
                self.loaded = False
                self.on_reset()
        if self.last_seq:
            config = js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.last_seq + 1,
            )
        else:
            config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT)
        self._sub = sub = await self.js.subscribe(
            names.kv_subject(self.bucket),
            stream=self.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            config=config,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            pending_msgs_limit=2_000_000,
        )
        if not self.loaded:
            consumer = await sub.consumer_info()
            if consumer.num_pending == 0 and sub.delivered == 0:
                self._set_loaded()

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await sub.unsubscribe()

    def _set_loaded(self) -> None:
        if not self.loaded:
            self.loaded = True
            self.on_loaded()

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        if seq <= self.last_seq:
            return  # replayed after a resubscribe
        self.last_seq = seq
        value: bytes | None = msg.data or None
        headers = msg.headers
        if headers:
            if headers.get(KV_OP) in (KV_DEL, KV_PURGE) or _MARKER_REASON in headers:
                value = None
        try:
            self.on_entry(msg.subject[len(self.prefix) :], value)
        except Exception:  # one bad record must not stop the watch
            log.exception("cannot apply %s from %s", msg.subject, self.bucket)
        if not self.loaded and meta.num_pending == 0:
            self._set_loaded()
        await self._turns.take()
