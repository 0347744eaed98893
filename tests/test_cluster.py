"""A 3-node JetStream cluster on loopback, as compose.yaml deploys it: resources replicated
three times, executors on different nodes, and work that goes on when a node dies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import nats.errors
import pytest

import sdk
from broker import catalog, names, store
from broker.connection import Bus, connect
from broker.models import RunRecord
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from tests.helpers import Daemon, make_zip, start_cluster, wait_for_executors
from tests.test_scheduler import EVERY_SECOND, RunLog, scheduled, second, start_scheduler

HELLO = make_zip({"main.py": "import sdk\nprint('args', sdk.task_args())\n"})


async def wait_until_answering(bus: Bus, timeout_s: float = 60.0) -> None:
    """After a node dies, clients reconnect and streams whose leader it was elect another
    (~1 s unloaded, several on a busy machine); in between, requests time out."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await store.get(bus.runs, "probe", RunRecord)  # answered: None
                return
            except (nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(0.2)  # polling a recovering cluster: nothing to watch yet


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedServer]]:
    servers = start_cluster(tmp_path / "cluster")
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.timeout(240)
async def test_runs_survive_a_node_dying(
    cluster: list[EmbeddedServer], tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    urls = ",".join(server.url for server in cluster)
    settings = ConnectSettings.from_env(urls, replicas=3)
    bus = await connect(settings)
    try:
        # Two executors, each first pointed at a different node (they fail over to the others).
        for index in (1, 2):
            node_first = ",".join(
                [cluster[index].url, *(s.url for s in cluster if s is not cluster[index])]
            )
            start_daemon("executor", "--url", node_first, "--slots", "2",
                         "--work-dir", str(tmp_path / f"executor{index}"))  # fmt: skip
        await wait_for_executors(bus, 2)
        # The executors provisioned with the default of one replica: nothing shrank.
        for stream in ("KV_taskbus_runs", "TASKBUS_RUNQ", "TASKBUS_ZIPS"):
            assert (await bus.js.stream_info(stream)).config.num_replicas == 3

        async with sdk.AsyncClient(url=urls) as wl:
            orch = await wl.upload_orchestration(bytes_buffer=HELLO, name="hello")
            await orch.wait_until_ready(timeout=60)

            async def run_batch(count: int) -> list[str]:
                tasks = [
                    await orch.run_once(name=f"t{i}", json_args={"i": i}) for i in range(count)
                ]
                return list(await asyncio.gather(*(task.wait(timeout=120) for task in tasks)))

            assert await run_batch(4) == ["success"] * 4
            cluster[0].stop()  # one node of three dies: quorum remains
            await wait_until_answering(bus)
            await wait_until_answering(await wl.session.bus())  # the SDK's own connection too
            assert await run_batch(4) == ["success"] * 4
    finally:
        await bus.close()


@pytest.mark.timeout(240)
async def test_two_schedulers_on_different_nodes_fire_each_instant_once(
    cluster: list[EmbeddedServer], start_daemon: Callable[..., Daemon]
) -> None:
    """compose.yaml's HA shape: both schedulers fire every instant of 20 seconds-level tasks
    (each tick a small burst through the pipelined path), racing for each run record's
    create() on an R3 bucket from different nodes; the bus keeps exactly one run per instant
    and one request per run."""
    urls = ",".join(server.url for server in cluster)
    bus = await connect(ConnectSettings.from_env(urls, replicas=3))
    try:
        for index in (1, 2):
            await start_scheduler(start_daemon, cluster[index].url)
        orch = await catalog.upload_orchestration(bus, HELLO, name="hello", file_name="h.zip")
        async with RunLog(bus) as log:
            tasks = [await scheduled(bus, orch, EVERY_SECOND) for _ in range(20)]

            def fired(count: int) -> bool:
                return all(len(log.of(task.id)) >= count for task in tasks)

            await log.wait_for("6 instants of every task", lambda: fired(6), 60)
            for task in tasks:
                await catalog.set_task_flags(bus, task.id, killed=True)
        total = 0
        for task in tasks:
            instants = [run.instant for run in log.of(task.id)]
            assert None not in instants and len(set(instants)) == len(instants), task.id
            first = second(task.created_at) + timedelta(seconds=1)
            assert instants == [first + timedelta(seconds=n) for n in range(len(instants))]
            total += len(instants)
        assert (await bus.js.stream_info(names.RUNQ_STREAM)).state.messages == total
    finally:
        await bus.close()
