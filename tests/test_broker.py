"""The bus contract itself: provisioning, the embedded server, records and zips."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from broker import archive, catalog, dispatch, logs, names, store
from broker.connection import Bus, connect
from broker.errors import InvalidOrchestration, NotConnected, ServerError
from broker.models import LogBatch, LogLine, RunRecord, TaskRecord, encode, utcnow
from broker.publisher import Publisher
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings, split_urls
from broker.status import RunStatus, TaskKind
from tests.helpers import Daemon, make_zip


async def test_provisioning_is_idempotent(nats_url: str) -> None:
    first = await connect(ConnectSettings(urls=[nats_url]))
    second = await connect(ConnectSettings(urls=[nats_url]))
    await store.put(first.tasks, "k", _task())
    found = await store.get(second.tasks, "k", TaskRecord)
    assert found is not None and found[0].name == "t"
    await first.close()
    await second.close()


async def test_missing_server_says_what_to_run() -> None:
    with pytest.raises(NotConnected) as caught:
        await connect(ConnectSettings(urls=["nats://127.0.0.1:1"]))
    message = str(caught.value)
    assert "nats://127.0.0.1:1" in message and "taskbus up" in message


def test_busy_port_is_a_clear_error(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    clash = EmbeddedServer(ServerSettings(data_dir=tmp_path / "other", port=nats_server.port))
    with pytest.raises(ServerError, match="already in use"):
        clash.start()


async def test_concurrent_flag_writes_both_land(bus: Bus) -> None:
    """Compare-and-set: many writers racing on one task record lose nothing."""
    task = _task(key=catalog.new_id())
    await store.put(bus.tasks, task.key, task)
    await asyncio.gather(
        *(catalog.set_task_flags(bus, task.id, paused=True) for _ in range(10)),
        catalog.set_task_flags(bus, task.id, killed=True),
    )
    found = await store.get(bus.tasks, task.key, TaskRecord)
    assert found is not None
    assert found[0].killed  # the kill was not overwritten by a stale pause write


def test_split_urls() -> None:
    assert split_urls("a:1, nats://b:2,,") == ["nats://a:1", "nats://b:2"]


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"run.py": "x"}, "no main.py"),
        ({"main.py": "x", "requirements.txt": "a", "sub/requirements.txt": "b"}, "several"),
        ({"main.py": "x", "../evil.py": "x"}, "'..'"),
        ({"main.py": "x", "/etc/evil": "x"}, "absolute"),
    ],
)
def test_invalid_zips_are_named(files: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidOrchestration, match=problem):
        archive.inspect(make_zip(files))


def test_not_a_zip_and_empty_zip() -> None:
    with pytest.raises(InvalidOrchestration, match="Not a zip"):
        archive.inspect(b"hello")
    with pytest.raises(InvalidOrchestration, match="empty"):
        archive.inspect(make_zip({}))


def test_entrypoint_is_root_else_shallowest() -> None:
    assert archive.find_entrypoint(["b/main.py", "main.py"]) == "main.py"
    assert archive.find_entrypoint(["b/c/main.py", "z/main.py", "a/main.py"]) == "a/main.py"


def test_bad_task_inputs() -> None:
    with pytest.raises(TypeError, match="dict"):
        catalog.check_json_args([1, 2])
    with pytest.raises(TypeError, match="JSON"):
        catalog.check_json_args({"x": object()})
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ValueError, match="positive"):
            catalog.check_timeout(bad)
    with pytest.raises(ValueError, match="not a valid task id"):
        catalog.check_id("nope")


def _task(name: str = "t", key: str = "k") -> TaskRecord:
    now = utcnow()
    return TaskRecord(
        id=key,
        name=name,
        orchestration_id="o",
        kind=TaskKind.RUN_ONCE,
        created_at=now,
        updated_at=now,
    )


async def test_a_record_that_does_not_decode_is_skipped(
    bus: Bus, nats_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    """A record written by hand or by a newer release must not stop listing, watching, or the
    scheduler from starting and firing the tasks it can read."""
    await bus.tasks.put(f"default.{catalog.new_id()}", b'{"overlap": "queue"}')
    orch = await catalog.upload_orchestration(bus, make_zip({"main.py": ""}), name="o",
                                              file_name="o.zip")  # fmt: skip
    task = await catalog.create_task(
        bus, orch, name="every second", kind=TaskKind.SCHEDULED, schedule="* * * * * *"
    )
    assert [t.id for t in await catalog.list_tasks(bus)] == [task.id]
    start_daemon("broker.scheduler", "--url", nats_url)
    async with asyncio.timeout(30):
        async for _key, run in store.watch(bus.runs, RunRecord, f"{task.key}.*"):
            if run is not None:
                break


async def test_a_failing_reconnect_callback_does_not_break_the_connection(
    tmp_path: Path,
) -> None:
    server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "nats", port=0)).start()
    bus = await connect(ConnectSettings(urls=[server.url]))
    reconnected = asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("a component's callback failed")

    async def working() -> None:
        reconnected.set()

    bus.on_reconnect += [broken, working]
    try:
        server.stop()
        server = EmbeddedServer(
            ServerSettings(data_dir=server.settings.data_dir, port=server.port)
        ).start()
        async with asyncio.timeout(30):
            await reconnected.wait()
        await store.put(bus.tasks, "k", _task())  # the connection works after it
        assert await store.get(bus.tasks, "k", TaskRecord) is not None
    finally:
        await bus.close()
        server.stop()


async def test_log_tail_reads_the_last_lines_only(bus: Bus) -> None:
    """tail(limit) equals the end of a full read, over batches of uneven size interleaved
    with another run's on the same stream, without replaying the log from its start."""
    lines_so_far = {"a": 0, "b": 0}
    for index in range(300):
        for run_id in ("a", "b"):
            count = 1 + index % 7
            first = lines_so_far[run_id] + 1
            lines_so_far[run_id] += count
            batch = LogBatch(
                task_id="t",
                run_id=run_id,
                lines=[
                    LogLine(seq=seq, ts=utcnow(), stream="stdout", text=f"{run_id} line {seq}")
                    for seq in range(first, first + count)
                ],
                eof=index == 299,
            )
            subject = names.logs_subject(names.DEFAULT_WORKSPACE, "t", run_id)
            await bus.js.publish_async(subject, encode(batch))
    await bus.js.publish_async_completed()
    run_a, missing = (RunRecord(task_id="t", run_id=r, created_at=utcnow()) for r in ("a", "m"))
    everything = await logs.read(bus, run_a)
    assert len(everything) == lines_so_far["a"]
    for limit in (1, 5, 7, 100, 1000, lines_so_far["a"], lines_so_far["a"] + 10):
        assert await logs.tail(bus, run_a, limit) == everything[-limit:]
    assert await logs.tail(bus, missing, 5) == []


async def test_pipelined_publishes_are_acknowledged_each(bus: Bus) -> None:
    subject = names.runq_subject("pipelined")
    acks = await asyncio.gather(
        *(bus.publisher.publish(subject, b"{}", {names.MSG_ID: f"m{n % 50}"}) for n in range(100))
    )
    assert sorted(ack.seq for ack in acks if not ack.duplicate) == list(range(1, 51))
    assert sum(ack.duplicate for ack in acks) == 50  # the stream de-duplicated by Msg-Id
    assert {ack.stream for ack in acks} == {names.RUNQ_STREAM}


async def test_a_pipelined_publish_raises_what_js_publish_would(bus: Bus) -> None:
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await bus.publisher.publish("taskbus.no.stream.here", b"", {})
    impatient = Publisher(bus.nc, timeout_s=0.2)
    await impatient.start()
    listener = await bus.nc.subscribe("taskbus.no.ack.here")  # a responder that never acks
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await impatient.publish("taskbus.no.ack.here", b"{}", {})
        assert (await listener.next_msg(timeout=5)).data == b"{}"
    finally:
        await listener.unsubscribe()
    assert not impatient._waiting  # nothing left behind by the timeout


async def test_create_through_the_publisher_refuses_a_live_key_and_replaces_a_deleted_one(
    bus: Bus,
) -> None:
    first = RunRecord(task_id="t", run_id="r", created_at=utcnow())
    second = RunRecord(task_id="t", run_id="r", reason="second", created_at=utcnow())
    assert await store.create(bus.runs, "t.r", first, bus.publisher)
    assert not await store.create(bus.runs, "t.r", second, bus.publisher)
    await bus.runs.delete("t.r")
    assert await store.create(bus.runs, "t.r", second, bus.publisher)
    current = await store.get(bus.runs, "t.r", RunRecord)
    assert current is not None and current[0].reason == "second"


async def test_a_burst_of_fires_creates_each_run_once_and_requests_each_once(bus: Bus) -> None:
    now = utcnow().replace(microsecond=0)
    tasks = [
        TaskRecord(
            id=f"t{n}",
            name=f"t{n}",
            orchestration_id="o",
            kind=TaskKind.SCHEDULED,
            schedule="* * * * *",
            pool="burst",
            created_at=now,
            updated_at=now,
        )
        for n in range(300)
    ]
    fires = [(task, now) for task in tasks]
    # One instant already fired by a peer (still pending), one already finished.
    peer, _ = await dispatch.enqueue_run(bus, tasks[0], instant=now)
    done = RunRecord(
        task_id="t1", run_id=dispatch.run_id_for("t1", now), status=RunStatus.SUCCESS,
        instant=now, created_at=now,
    )  # fmt: skip
    assert await store.create(bus.runs, done.key, done)

    outcomes = await dispatch.enqueue_fires(bus, fires)

    assert outcomes[0] == (peer, False) and outcomes[1] == (done, False)
    for (task, instant), outcome in zip(fires[2:], outcomes[2:], strict=True):
        assert not isinstance(outcome, Exception)
        record, created = outcome
        assert created and record.run_id == dispatch.run_id_for(task.id, instant)
        stored = await store.get(bus.runs, record.key, RunRecord)
        assert stored is not None and stored[0].status is RunStatus.PENDING
    # A second burst of the same instants (a peer scheduler) creates and queues nothing new.
    again = await dispatch.enqueue_fires(bus, fires)
    assert all(not isinstance(o, Exception) and not o[1] for o in again)
    info = await bus.js.stream_info(names.RUNQ_STREAM, subjects_filter=names.runq_subject("burst"))
    assert info.state.messages == 299  # every fire but the finished one, each once (Msg-Id)
