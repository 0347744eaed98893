"""Fixtures: a real nats-server with JetStream per test (~25 ms to start), on a free loopback
port with a temporary store, so no test sees another's records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from broker.connection import Bus, connect
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings
from tests.helpers import Daemon, wait_for_executors


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(ServerSettings(data_dir=tmp_path / "nats", port=0))
    with server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    connection = await connect(ConnectSettings(urls=[nats_url]))
    yield connection
    await connection.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start `python -m <module> <args>` as a subprocess; every one is stopped at teardown."""
    daemons: list[Daemon] = []

    def start(module: str, *args: str) -> Daemon:
        log_path = tmp_path / f"{module}-{len(daemons)}.log"
        daemon = Daemon(["-m", module, *args], log_path)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
async def executor(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> Daemon:
    """One real executor process with 4 slots, ready (its heartbeat is on the bus)."""
    daemon = start_daemon(
        "executor", "--url", nats_url, "--slots", "4", "--work-dir", str(tmp_path / "executor")
    )
    await wait_for_executors(bus, 1)
    return daemon
