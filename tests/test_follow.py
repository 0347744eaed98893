"""broker.follow on a real nats-server: deliver policies, deletions and expiry markers as
removals, both faces, and resuming by stream sequence after the server restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker import names
from broker.connection import Bus, connect
from broker.follow import Deliver, Entry, Follow
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings


async def history(follow: Follow) -> list[Entry]:
    """Every entry until caught up (bounded)."""
    entries: list[Entry] = []
    async with asyncio.timeout(10):
        async for entry in follow:
            if entry.caught_up:
                return entries
            entries.append(entry)
    raise AssertionError("the follow ended before it caught up")


async def test_deliver_policies(bus: Bus) -> None:
    subject = names.logs_subject("default", "t", "r")
    for data in (b"1", b"2", b"3"):
        await bus.js.publish(subject, data)
    async with Follow(bus.js, names.LOGS_STREAM, subject) as every:
        entries = await history(every)
        assert [e.value for e in entries] == [b"1", b"2", b"3"]
    start = entries[1].seq
    async with Follow(bus.js, names.LOGS_STREAM, subject, start_seq=start) as later:
        assert [e.value for e in await history(later)] == [b"2", b"3"]

    for key, value in (("a", b"1"), ("b", b"2"), ("a", b"3")):
        await bus.tasks.put(key, value)
    async with Follow.bucket(bus.js, names.TASKS) as last:
        assert sorted((e.key, e.value) for e in await history(last)) == [("a", b"3"), ("b", b"2")]
    async with Follow.bucket(bus.js, names.TASKS, "b", deliver=Deliver.ALL) as b:
        assert [(e.key, e.value) for e in await history(b)] == [("b", b"2")]


async def test_deletions_purges_and_expiry_markers_are_removals(bus: Bus) -> None:
    seen: list[tuple[str, bytes | None]] = []
    loaded = asyncio.Event()
    follow = Follow.bucket(
        bus.js, names.RUNS, on_entry=lambda k, v: seen.append((k, v)), on_loaded=loaded.set
    )
    await follow.start()
    try:
        await asyncio.wait_for(loaded.wait(), 10)  # an empty bucket is loaded at once
        await bus.runs.put("t.deleted", b"x")
        await bus.runs.delete("t.deleted")
        await bus.runs.put("t.purged", b"x")
        await bus.runs.purge("t.purged")
        # A record with a TTL: the server removes it and leaves an expiry marker.
        await bus.js.publish(
            names.kv_subject(names.RUNS, "t.expired"), b"x", headers={names.TTL: "1"}
        )
        wanted = [
            ("t.deleted", b"x"),
            ("t.deleted", None),
            ("t.purged", b"x"),
            ("t.purged", None),
            ("t.expired", b"x"),
            ("t.expired", None),
        ]
        async with asyncio.timeout(15):
            while seen != wanted:
                assert seen == wanted[: len(seen)]
                await asyncio.sleep(0.05)
    finally:
        await follow.stop()


async def test_resumes_from_the_last_sequence_after_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "nats", port=0)).start()
    try:
        bus = await connect(ConnectSettings(urls=[server.url]), reconnect_forever=True)
        try:
            for index in range(3):
                await bus.tasks.put(f"before{index}", b"x")
            async with Follow.bucket(bus.js, names.TASKS, bus=bus) as follow:
                assert len(await history(follow)) == 3
                reconnected = asyncio.Event()

                async def on_reconnect() -> None:
                    reconnected.set()

                bus.on_reconnect.append(on_reconnect)
                server.stop()
                server = EmbeddedServer(
                    ServerSettings(data_dir=tmp_path / "nats", port=server.port)
                ).start()
                await asyncio.wait_for(reconnected.wait(), 15)
                await bus.tasks.put("after", b"y")
                # Well inside the many seconds a consumer kept across a restart stays blind,
                # and nothing of the history again.
                entry = await follow.next(5.0)
                assert entry is not None and (entry.key, entry.value) == ("after", b"y")
                assert await follow.next(0.3) is None
        finally:
            await bus.close()
    finally:
        server.stop()
