"""Reading and writing records in KV buckets: typed gets, compare-and-set, listing, watching.

Every read-modify-write goes through ``update`` (compare-and-set on the KV revision, retried on
conflict), so two writers never lose each other's change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from broker.models import Record, decode, encode

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

CAS_ATTEMPTS = 50  # conflicts resolve in one or two retries; 50 means something is wrong


async def get(kv: KeyValue, key: str, kind: type[R]) -> tuple[R, int] | None:
    """The record at ``key`` and its revision, or None when absent, deleted or expired."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value or entry.revision is None:
        return None
    return decode(kind, entry.value), entry.revision


async def create(kv: KeyValue, key: str, record: Record) -> bool:
    """Write ``record`` only if ``key`` holds nothing; False when it already exists."""
    try:
        await kv.create(key, encode(record))
    except KeyWrongLastSequenceError:
        return False
    return True


async def put(kv: KeyValue, key: str, record: Record) -> int:
    revision: int = await kv.put(key, encode(record))
    return revision


async def update(
    kv: KeyValue, key: str, kind: type[R], mutate: Callable[[R], R | None]
) -> R | None:
    """Compare-and-set: apply ``mutate`` to the current record until the write wins.

    ``mutate`` returns the new record, or None to leave the record as it is (then the current
    one is returned). Returns None when the key does not exist.
    """
    for _ in range(CAS_ATTEMPTS):
        current = await get(kv, key, kind)
        if current is None:
            return None
        record, revision = current
        changed = mutate(record)
        if changed is None:
            return record
        try:
            await kv.update(key, encode(changed), last=revision)
        except KeyWrongLastSequenceError:
            log.debug("conflict on %s/%s, retrying", kv._name, key)
            continue
        return changed
    raise RuntimeError(f"gave up updating {key} after {CAS_ATTEMPTS} conflicting writes")


async def scan(kv: KeyValue, kind: type[R], keys: str = ">") -> dict[str, R]:
    """Every live record whose key matches the subject pattern ``keys``, in one consumer."""
    records: dict[str, R] = {}
    watcher = await kv.watch(keys, ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                records[entry.key] = decode(kind, entry.value)
    finally:
        await watcher.stop()
    return records


async def watch(
    kv: KeyValue, kind: type[R], keys: str = ">"
) -> AsyncIterator[tuple[str, R | None]]:
    """Current records, then ``("", None)`` once caught up, then live changes for ever.

    A deleted or expired key yields ``(key, None)``. The caller recreates the watch after a
    reconnect (NATS-NOTES: an old watcher stays blind for ~19 s after a server restart).
    """
    watcher = await kv.watch(keys)
    try:
        async for entry in watcher:
            if entry is None:
                yield "", None
            elif entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                yield entry.key, None
            else:
                yield entry.key, decode(kind, entry.value)
    finally:
        await watcher.stop()
