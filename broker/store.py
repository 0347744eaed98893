"""Reading and writing records in KV buckets: typed gets, compare-and-set, listing, watching.

Every read-modify-write goes through ``update`` (compare-and-set on the KV revision, retried on
conflict), so two writers never lose each other's change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker import names
from broker.follow import Follow
from broker.models import Record, decode, encode
from broker.publisher import Publisher

if TYPE_CHECKING:
    from broker.connection import Bus

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

CAS_ATTEMPTS = 50  # conflicts resolve in one or two retries; 50 means something is wrong
SCAN_TIMEOUT_S = 10.0  # one record of a listing taking longer means the server is in trouble
RENEW_RETRY_S = 0.25  # a watch not answered at its start retries this often


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


async def scan(
    bus: Bus,
    bucket: str,
    kind: type[R],
    keys: str = ">",
    accept: Callable[[str], object] | None = None,
) -> dict[str, R]:
    """Every live record whose key matches the subject pattern ``keys`` (``scan_js``)."""
    return await scan_js(bus.js, bucket, kind, keys, accept)


async def scan_js(
    js: JetStreamContext,
    bucket: str,
    kind: type[R],
    keys: str = ">",
    accept: Callable[[str], object] | None = None,
) -> dict[str, R]:
    """Every live record whose key matches the subject pattern ``keys``, in one consumer;
    with ``accept``, only those whose key it accepts are decoded (a bucket's other keys, such
    as the workspaces bucket's id counter, hold other records).

    Not ``kv.watch()``'s "caught up" marker: it can come before a record the server had
    already pushed (a record then goes missing from a listing). The consumer's own counts say
    how many records to read.
    """
    # A named consumer puts its filter in the API subject ($JS.API.CONSUMER.CREATE.<stream>.
    # <name>.<filter>), so server permissions can allow a listing of some keys only (a run
    # lists its own task's runs); its answer already says how many records there are.
    records: dict[str, R] = {}
    listing = Follow.bucket(
        js,
        bucket,
        keys,
        until_loaded=True,
        named="scan",
        flow_control=False,
        inactive_threshold_s=SCAN_TIMEOUT_S,
    )
    async with listing:
        while True:
            try:
                entry = await listing.next(SCAN_TIMEOUT_S)
            except StopAsyncIteration:
                return records
            if entry is None:
                raise nats.errors.TimeoutError
            if entry.value is not None and (accept is None or accept(entry.key)):
                record = _decoded(kind, entry.key, entry.value)
                if record is not None:
                    records[entry.key] = record


async def watch(
    kv: KeyValue, kind: type[R], keys: str = ">", *, bus: Bus | None = None
) -> AsyncIterator[tuple[str, R | None]]:
    """Current records, then ``("", None)`` once caught up, then live changes for ever.

    A deleted or expired key yields ``(key, None)``. With ``bus``, the watch resumes after
    every reconnect from the last change it saw (an old watcher stays blind for many seconds
    after a server restart), and creating it is retried while the server does not answer;
    without it, the caller recreates the watch itself.
    """
    bucket = kv._name
    follow = Follow.bucket(kv._js, bucket, keys, bus=bus)
    try:
        while True:
            try:
                await follow.open()
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                if bus is None:
                    raise
                # Disconnected, or just after a server restart JetStream does not answer for
                # a moment: the caller bounds the whole watch with its own timeout.
                log.debug("watch on %s/%s not ready yet (%s)", bucket, keys, exc)
                await asyncio.sleep(RENEW_RETRY_S)
        async for entry in follow:
            if entry.caught_up:
                yield "", None
            elif entry.value is None:
                yield entry.key, None
            else:
                record = _decoded(kind, entry.key, entry.value)
                if record is not None:
                    yield entry.key, record
    finally:
        await follow.stop()
