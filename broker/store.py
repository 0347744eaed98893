"""Reading and writing records in KV buckets: typed gets, compare-and-set, listing, watching.

Every read-modify-write goes through ``update`` (compare-and-set on the KV revision, retried on
conflict), so two writers never lose each other's change.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import nats.errors
from nats.js import api as js_api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from broker import names
from broker.models import Record, decode, encode
from broker.publisher import Publisher

if TYPE_CHECKING:
    from broker.connection import Bus

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

CAS_ATTEMPTS = 50  # conflicts resolve in one or two retries; 50 means something is wrong
SCAN_TIMEOUT_S = 10.0  # one record of a listing taking longer means the server is in trouble
RENEW_RETRY_S = 0.25  # a watch recreated after a reconnect retries this often until answered


async def get(kv: KeyValue, key: str, kind: type[R]) -> tuple[R, int] | None:
    """The record at ``key`` and its revision, or None when absent, deleted or expired."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value or entry.revision is None:
        return None
    return decode(kind, entry.value), entry.revision


async def create(
    kv: KeyValue,
    key: str,
    record: Record,
    publisher: Publisher | None = None,
    *,
    ttl_s: float | None = None,
) -> bool:
    """Write ``record`` only if ``key`` holds nothing; False when it already exists.

    With a ``publisher`` the usual case (a new key) costs one pipelined publish instead of a
    request; a refused one goes on through nats-py's ``create``, which tells a live key from a
    deleted one (a tombstone, which a create may replace). ``ttl_s``: the record expires then.
    """
    subject, payload, headers = create_message(kv._name, key, record, ttl_s)
    if publisher is not None:
        ack = await publisher.publish(subject, payload, headers, check=False)
        if ack.error is None:
            return True
        if not ack.error.wrong_last_sequence:
            raise ack.error.exception()
    try:
        await kv.create(key, payload, msg_ttl=ttl_s)
    except KeyWrongLastSequenceError:
        return False
    return True


def create_message(
    bucket: str, key: str, record: Record, ttl_s: float | None = None
) -> tuple[str, bytes, dict[str, str]]:
    """What a ``create()`` publishes (subject, payload, headers), for a pipelined sender."""
    return names.kv_subject(bucket, key), encode(record), _headers(0, ttl_s)


def _headers(last: int, ttl_s: float | None) -> dict[str, str]:
    """A compare-and-set write's headers: the revision it replaces (0: none), and a TTL."""
    headers = {names.EXPECTED_LAST_SUBJECT_SEQ: str(last)}
    if ttl_s is not None:
        headers[names.TTL] = str(max(1, round(ttl_s)))
    return headers


async def put(kv: KeyValue, key: str, record: Record) -> int:
    revision: int = await kv.put(key, encode(record))
    return revision


async def update(
    kv: KeyValue,
    key: str,
    kind: type[R],
    mutate: Callable[[R], R | None],
    *,
    publisher: Publisher | None = None,
    ttl: Callable[[R], float | None] | None = None,
) -> R | None:
    """Compare-and-set: apply ``mutate`` to the current record until the write wins.

    ``mutate`` returns the new record, or None to leave the record as it is (then the current
    one is returned). Returns None when the key does not exist. With a ``publisher`` the write
    is a pipelined publish; ``ttl`` (which needs one) gives the new record's time to live in
    seconds, or None for none (e.g. only once a run has finished).
    """
    if ttl is not None and publisher is None:
        raise ValueError("a TTL is written through a publisher")
    for _ in range(CAS_ATTEMPTS):
        current = await get(kv, key, kind)
        if current is None:
            return None
        record, revision = current
        changed = mutate(record)
        if changed is None:
            return record
        if publisher is None:
            try:
                await kv.update(key, encode(changed), last=revision)
            except KeyWrongLastSequenceError:
                log.debug("conflict on %s/%s, retrying", kv._name, key)
                continue
            return changed
        headers = _headers(revision, ttl(changed) if ttl is not None else None)
        subject = names.kv_subject(kv._name, key)
        ack = await publisher.publish(subject, encode(changed), headers, check=False)
        if ack.error is None:
            return changed
        if not ack.error.wrong_last_sequence:
            raise ack.error.exception()
        log.debug("conflict on %s/%s, retrying", kv._name, key)
    raise RuntimeError(f"gave up updating {key} after {CAS_ATTEMPTS} conflicting writes")


def _decoded(kind: type[R], key: str, value: bytes) -> R | None:
    """A record, or None (logged) for one that does not decode: a record written by a newer
    release or by hand must not stop a component that lists or watches the bucket."""
    try:
        return decode(kind, value)
    except msgspec.DecodeError as exc:
        log.warning("skipping %s record %r that does not decode: %s", kind.__name__, key, exc)
        return None


async def scan(bus: Bus, bucket: str, kind: type[R], keys: str = ">") -> dict[str, R]:
    """Every live record whose key matches the subject pattern ``keys``, in one consumer.

    Not ``kv.watch()``'s "caught up" marker: it can come before a record the server had
    already pushed (a record then goes missing from a listing). The consumer's own counts say
    how many records to read.
    """
    # A named consumer puts its filter in the API subject ($JS.API.CONSUMER.CREATE.<stream>.
    # <name>.<filter>), so server permissions can allow a listing of some keys only (a run
    # lists its own task's runs); its answer already says how many records there are.
    stream = f"KV_{bucket}"
    config = js_api.ConsumerConfig(
        name=f"scan_{uuid.uuid4().hex}",
        deliver_subject=bus.nc.new_inbox(),
        filter_subject=names.kv_subject(bucket, keys),
        deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=js_api.AckPolicy.NONE,
        max_deliver=1,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=SCAN_TIMEOUT_S,
    )
    info = await bus.nc.jsm().add_consumer(stream, config)
    records: dict[str, R] = {}
    prefix = len(names.kv_subject(bucket, ""))
    if not info.num_pending:
        return records
    sub = await bus.js.subscribe_bind(stream=stream, config=config, consumer=info.name)
    try:
        while True:
            msg = await sub.next_msg(timeout=SCAN_TIMEOUT_S)
            key = msg.subject[prefix:]
            operation = msg.headers.get(KV_OP) if msg.headers else None
            if msg.data and operation not in (KV_DEL, KV_PURGE):
                record = _decoded(kind, key, msg.data)
                if record is not None:
                    records[key] = record
            if msg.metadata.num_pending == 0:
                return records
    finally:
        await sub.unsubscribe()


async def watch(
    kv: KeyValue, kind: type[R], keys: str = ">", *, bus: Bus | None = None
) -> AsyncIterator[tuple[str, R | None]]:
    """Current records, then ``("", None)`` once caught up, then live changes for ever.

    A deleted or expired key yields ``(key, None)``. With ``bus``, the watch is recreated after
    every reconnect (an old watcher stays blind for many seconds after a server restart)
    and replays the current records and the caught-up marker again, and creating it is retried
    while the server does not answer; without it, the caller recreates the watch itself.
    """
    while True:
        reconnected = asyncio.Event()
        on_reconnect = _setter(reconnected)
        try:
            watcher = await kv.watch(keys)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            if bus is None:
                raise
            # Disconnected, or just after a server restart JetStream does not answer for a
            # moment: the caller bounds the whole watch with its own timeout.
            log.debug("watch on %s/%s not ready again yet (%s)", kv._name, keys, exc)
            await asyncio.sleep(RENEW_RETRY_S)
            continue
        if bus is not None:
            bus.on_reconnect.append(on_reconnect)
        try:
            while True:
                entry = await _next_unless(watcher, reconnected) if bus else await anext(watcher)
                if reconnected.is_set():
                    break
                if entry is None:
                    yield "", None
                elif entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    yield entry.key, None
                else:
                    record = _decoded(kind, entry.key, entry.value)
                    if record is not None:
                        yield entry.key, record
        finally:
            if bus is not None:
                bus.on_reconnect.remove(on_reconnect)
            await watcher.stop()
        log.debug("recreating the watch on %s/%s after a reconnect", kv._name, keys)


def _setter(event: asyncio.Event) -> Callable[[], Awaitable[None]]:
    async def set_event() -> None:
        event.set()

    return set_event


async def _next_unless(watcher: KeyValue.KeyWatcher, event: asyncio.Event) -> Any:
    """The watcher's next entry, or None as soon as ``event`` is set."""
    entry = asyncio.ensure_future(anext(watcher))
    stop = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({entry, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not entry.done():
            entry.cancel()  # takes effect later: the entry must not be read below
    return entry.result() if entry.done() and not entry.cancelled() else None
