"""Fixtures: a real nats-server with JetStream per test (~25 ms to start), on a free loopback
port with a temporary store, so no test sees another's records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from broker.authority import Authority
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


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    """A fresh Taskbus authority (operator, accounts, role keys, one creds file per role)."""
    return Authority(tmp_path / "auth").ensure_local()


@pytest.fixture
async def secure_server(tmp_path: Path, authority: Authority) -> AsyncIterator[EmbeddedServer]:
    """A real nats-server in operator mode that requires the authority's credentials, with
    every resource provisioned by the admin (as `taskbus up` does)."""
    settings = ServerSettings(
        data_dir=tmp_path / "secure", port=0, config_file=authority.server_config
    )
    with EmbeddedServer(settings) as server:
        admin = await connect(as_role(server.url, authority, "admin"))
        await admin.close()
        yield server


def as_role(url: str, authority: Authority, name: str) -> ConnectSettings:
    """Connection settings with the credential issued as ``name`` (a role's own file)."""
    return ConnectSettings(urls=[url], creds_file=str(authority.creds_path(name)))
