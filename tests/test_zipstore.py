"""The workspace-scoped zip store on a real server: round trips, sharing, deletion, damage,
and the subjects it may use (those a workspace's permissions will allow, nothing else)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from collections.abc import AsyncIterator

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api

from broker import names, zipstore
from broker.connection import Bus
from broker.errors import InvalidArgument, ZipUnavailable
from broker.zipstore import ZipCorrupt, ZipMissing, ZipStore
from tests.helpers import make_zip

CHUNK = names.ZIP_CHUNK_BYTES


@pytest.fixture
async def zips(bus: Bus) -> ZipStore:
    await bus.js.add_stream(zipstore.stream_config(1))
    return ZipStore(bus.js, bus.publisher)


def _blob(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashlib.sha256(data).hexdigest(), data


async def _state(bus: Bus) -> js_api.StreamState:
    return (await bus.js.stream_info(names.ZIPS_STREAM)).state


async def _read(zips: ZipStore, workspace: str, sha: str) -> bytes:
    handle = io.BytesIO()
    size = await zips.read_into(workspace, sha, handle)
    assert size == len(handle.getvalue())
    return handle.getvalue()


@pytest.mark.parametrize(
    ("size", "chunks"),
    [(300 * 1024 + 1, 3), (2 * CHUNK, 2), (CHUNK - 1, 1), (0, 0)],
    ids=["300KiB+1", "two-chunks-exactly", "under-a-chunk", "empty"],
)
async def test_round_trip(bus: Bus, zips: ZipStore, size: int, chunks: int) -> None:
    sha, data = _blob(size)
    assert not await zips.exists("ws", sha)
    await zips.put("ws", sha, data)
    assert await zips.exists("ws", sha)
    assert await _read(zips, "ws", sha) == data
    assert (await _state(bus)).messages == chunks + 1  # and the manifest


async def test_round_trip_of_a_real_zip(zips: ZipStore) -> None:
    data = make_zip({"main.py": "print('hi')\n"})
    sha = hashlib.sha256(data).hexdigest()
    await zips.put("default", sha, data)
    assert await _read(zips, "default", sha) == data


async def test_put_again_publishes_nothing(bus: Bus, zips: ZipStore) -> None:
    sha, data = _blob(CHUNK + 10)
    await zips.put("ws", sha, data)
    before = await _state(bus)
    await zips.put("ws", sha, data)
    after = await _state(bus)
    assert (after.messages, after.last_seq) == (before.messages, before.last_seq)


async def test_a_zip_in_two_workspaces_is_two_copies(bus: Bus, zips: ZipStore) -> None:
    sha, data = _blob(CHUNK + 1)
    await zips.put("team-a", sha, data)
    await zips.put("team_b", sha, data)
    assert (await _state(bus)).messages == 2 * 3
    await zips.delete("team-a", sha)
    assert not await zips.exists("team-a", sha)
    with pytest.raises(ZipMissing):
        await _read(zips, "team-a", sha)
    assert await _read(zips, "team_b", sha) == data


async def test_delete_reclaims_the_space(bus: Bus, zips: ZipStore) -> None:
    sha, data = _blob(3 * CHUNK)
    await zips.put("ws", sha, data)
    stored = await _state(bus)
    assert stored.bytes > len(data)
    await zips.delete("ws", sha)
    deleted = await _state(bus)
    assert deleted.bytes < 4096  # a few empty tombstones, not 384 KiB
    assert not await zips.exists("ws", sha)
    # The tombstones expire (a per-message TTL), so deleted zips leave nothing behind.
    for part in ("m", "c.0", "c.2"):
        subject = names.zip_subject("ws", sha, part)
        try:
            tombstone = await bus.js.get_msg(names.ZIPS_STREAM, subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            continue  # expired already
        assert tombstone.data is None
        assert tombstone.headers is not None and tombstone.headers.get(names.TTL)
    # Deleting it again, or a zip never stored, publishes nothing.
    await zips.delete("ws", sha)
    await zips.delete("ws", _blob(5, seed=1)[0])
    assert (await _state(bus)).last_seq == deleted.last_seq
    # And it can be stored again.
    await zips.put("ws", sha, data)
    assert await _read(zips, "ws", sha) == data


async def test_a_missing_zip_says_to_upload_again(zips: ZipStore) -> None:
    sha, _ = _blob(10)
    assert not await zips.exists("ws", sha)
    with pytest.raises(ZipMissing, match="upload the orchestration again") as caught:
        await _read(zips, "ws", sha)
    assert isinstance(caught.value, ZipUnavailable)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\0" * CHUNK, "sha256"),  # the same length, other bytes
        (b"short", "5 bytes, not"),
        (b"", "chunk 1 is missing"),  # as a delete leaves it
    ],
    ids=["other-bytes", "short", "emptied"],
)
async def test_a_damaged_chunk_is_corrupt(
    bus: Bus, zips: ZipStore, payload: bytes, why: str
) -> None:
    sha, data = _blob(2 * CHUNK + 7)
    await zips.put("ws", sha, data)
    await bus.js.publish(names.zip_subject("ws", sha, "c.1"), payload)
    handle = io.BytesIO()
    with pytest.raises(ZipCorrupt, match="upload the orchestration again") as caught:
        await zips.read_into("ws", sha, handle)
    assert why in str(caught.value)
    # A put repairs nothing it believes complete, but a delete and a put do.
    await zips.delete("ws", sha)
    await zips.put("ws", sha, data)
    assert await _read(zips, "ws", sha) == data


async def test_an_unreadable_manifest_is_corrupt_and_put_rewrites_it(
    bus: Bus, zips: ZipStore
) -> None:
    sha, data = _blob(CHUNK + 1)
    await zips.put("ws", sha, data)
    await bus.js.publish(names.zip_subject("ws", sha, "m"), b"{not json")
    with pytest.raises(ZipCorrupt, match="manifest"):
        await _read(zips, "ws", sha)
    await zips.put("ws", sha, data)
    assert await _read(zips, "ws", sha) == data


@pytest.fixture
async def monitor(bus: Bus, nats_url: str) -> AsyncIterator[asyncio.Queue[Msg]]:
    """Every message published on the server but replies and the server's own events."""
    nc = await nats.connect(nats_url)
    seen: asyncio.Queue[Msg] = asyncio.Queue()

    async def keep(msg: Msg) -> None:
        if not msg.subject.startswith(("_INBOX.", "$JS.EVENT.", "$SYS.")):
            seen.put_nowait(msg)

    await nc.subscribe(">", cb=keep)
    await nc.flush()
    # Seen once, on a fresh server, the first message from another connection right after the
    # flush was not delivered: ask until one is, so the sentinels that follow are reliable.
    async with asyncio.timeout(10):
        while True:
            await bus.nc.publish("zipstore.ready", b"")
            try:
                async with asyncio.timeout(0.2):
                    if (await seen.get()).subject == "zipstore.ready":
                        break
            except TimeoutError:
                continue
    while not seen.empty():
        seen.get_nowait()  # further "ready"s
    yield seen
    await nc.close()


async def _seen_until_sentinel(bus: Bus, seen: asyncio.Queue[Msg]) -> list[str]:
    """The subjects the monitor saw before a last message from ``bus`` (which the server
    delivers after every earlier one of that connection)."""
    await bus.nc.publish("zipstore.sentinel", b"")
    subjects = []
    async with asyncio.timeout(5):
        while (msg := await seen.get()).subject != "zipstore.sentinel":
            if msg.subject != "zipstore.ready":
                subjects.append(msg.subject)
    return subjects


@pytest.mark.parametrize(
    ("workspace", "sha"),
    [
        ("a.b", None),
        ("*", None),
        (">", None),
        ("", None),
        ("a b", None),
        ("x" * 65, None),
        ("-lead", None),
        ("ws", "*"),
        ("ws", ">"),
        ("ws", "A" * 64),
        ("ws", "a" * 63),
        ("ws", "a" * 63 + "."),
        ("ws", "a" * 64 + ".m"),
    ],
)
async def test_bad_names_are_refused_before_anything_is_sent(
    bus: Bus, zips: ZipStore, monitor: asyncio.Queue[Msg], workspace: str, sha: str | None
) -> None:
    good_sha, data = _blob(10)
    sha = good_sha if sha is None else sha
    with pytest.raises(InvalidArgument):
        await zips.put(workspace, sha, data)
    with pytest.raises(InvalidArgument):
        await zips.exists(workspace, sha)
    with pytest.raises(InvalidArgument):
        await zips.read_into(workspace, sha, io.BytesIO())
    with pytest.raises(InvalidArgument):
        await zips.delete(workspace, sha)
    assert await _seen_until_sentinel(bus, monitor) == []


async def test_a_sha_that_is_not_the_datas_is_refused_before_any_publish(
    bus: Bus, zips: ZipStore
) -> None:
    _, data = _blob(CHUNK + 1)
    other, _ = _blob(10, seed=2)
    with pytest.raises(InvalidArgument, match="sha256"):
        await zips.put("ws", other, data)
    assert (await _state(bus)).last_seq == 0


async def test_only_the_workspaces_subjects_are_used_and_no_consumer(
    bus: Bus, zips: ZipStore, monitor: asyncio.Queue[Msg]
) -> None:
    """What a user's permissions will allow: publishes to ``taskbus.zips.<workspace>.>`` and
    last-by-subject direct gets under it; no stream info, no consumer."""
    sha, data = _blob(2 * CHUNK + 1)
    await zips.put("ws", sha, data)
    assert await zips.exists("ws", sha)
    assert await _read(zips, "ws", sha) == data
    await zips.delete("ws", sha)
    subjects = await _seen_until_sentinel(bus, monitor)
    own = f"taskbus.zips.ws.{sha}."
    direct = f"$JS.API.DIRECT.GET.{names.ZIPS_STREAM}.{own}"
    assert subjects and all(s.startswith((own, direct)) for s in subjects), subjects
    # every chunk and the manifest were read by direct get, each on its own subject
    reads = {s.removeprefix(direct) for s in subjects if s.startswith(direct)}
    assert reads == {"m", "c.0", "c.1", "c.2"}
    assert (await _state(bus)).consumer_count == 0
