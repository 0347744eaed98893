"""compose.yaml's cluster, run on loopback: three nodes loading deploy/nats.conf (operator-mode
authentication, TLS for clients, routes authenticated by mutual TLS), resources provisioned by
the admin, and a task run end to end by an executor holding only the executor credential."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

import sdk
from broker.authority import Authority
from broker.connection import connect
from broker.errors import NotConnected
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from broker.tls import make_tls
from tests.helpers import REPO, Daemon, make_zip, start_cluster, wait_for_executors


@pytest.fixture
def secure_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[list[EmbeddedServer], Authority, Path]]:
    monkeypatch.setenv("TASKBUS_JS_KEY", secrets.token_hex(32))  # encryption at rest
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    # The file as compose.yaml mounts it at /etc/nats/, pointed at this folder instead.
    text = (REPO / "deploy" / "nats.conf").read_text()
    (conf_dir / "nats.conf").write_text(text.replace("/etc/nats/", f"{conf_dir}/"))
    authority = Authority(conf_dir / "auth").ensure_local()
    tls = make_tls(authority.root / "tls", ["nats1", "nats2", "nats3"])
    servers = start_cluster(tmp_path / "cluster", config_file=conf_dir / "nats.conf")
    yield servers, authority, tls["ca"]
    for server in servers:
        server.stop()


def settings_for(
    servers: list[EmbeddedServer], authority: Authority, role: str, ca: Path
) -> ConnectSettings:
    urls = [server.url.replace("nats://", "tls://") for server in servers]
    return ConnectSettings(
        urls=urls, creds_file=str(authority.creds_path(role)), tls_ca_file=str(ca), replicas=3
    )


@pytest.mark.timeout(180)
async def test_a_task_runs_on_the_secured_cluster(
    secure_cluster: tuple[list[EmbeddedServer], Authority, Path],
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers, authority, ca = secure_cluster
    admin = await connect(settings_for(servers, authority, "admin", ca))  # provisions, R3
    info = await admin.js.stream_info("KV_taskbus_tasks")
    assert info.config.num_replicas == 3
    monkeypatch.setenv("TASKBUS_TLS_CA", str(ca))
    monkeypatch.setenv("TASKBUS_REPLICAS", "3")
    urls = ",".join(s.url.replace("nats://", "tls://") for s in servers)
    monkeypatch.setenv("TASKBUS_CREDS", str(authority.creds_path("executor")))
    start_daemon("executor", "--url", urls, "--work-dir", str(tmp_path / "executor"))
    # A user's run-once task is started by the scheduler (users may not write run records).
    start_daemon(
        "broker.scheduler", "--url", urls, "--creds", str(authority.creds_path("scheduler"))
    )
    try:
        await wait_for_executors(admin, 1, timeout_s=60)
        client = sdk.AsyncClient(settings=settings_for(servers, authority, "user", ca))
        async with client:
            orch = await client.upload_orchestration(
                bytes_buffer=make_zip({"main.py": "print('hello from the cluster')"})
            )
            await orch.wait_until_ready(timeout=60)
            task = await orch.run_once(name="secure", timeout=60)
            assert await task.wait(timeout=60) == "success"
            run = (await task.last_runs())[0]
            assert any("hello from the cluster" in line for line in await run.logs())
        # Encrypted at rest: the log line is nowhere in clear in any node's store files.
        stored = [p for p in (tmp_path / "cluster").rglob("*") if p.is_file()]
        assert stored and not any(b"hello from the cluster" in p.read_bytes() for p in stored)
    finally:
        await admin.close()


async def test_plain_connections_and_strangers_are_refused(
    secure_cluster: tuple[list[EmbeddedServer], Authority, Path], tmp_path: Path
) -> None:
    servers, authority, ca = secure_cluster
    # No TLS: the server insists on it, and the error says how to give it.
    with pytest.raises(NotConnected, match="tls://"):
        await connect(
            ConnectSettings(
                urls=[servers[0].url],
                creds_file=str(authority.creds_path("user")),
                connect_timeout_s=1,
            )
        )
    # TLS, but a credential of another authority (over TLS the server's closing the
    # connection can reach the client before its "Authorization Violation" does).
    stranger = Authority(tmp_path / "stranger").ensure_local()
    with pytest.raises(NotConnected):
        await connect(settings_for(servers, stranger, "user", ca))
    # TLS with the right CA and credential: accepted (the refusals above are not a broken
    # server).
    context = ssl.create_default_context(cafile=str(ca))
    nc = await nats.connect(
        servers[0].url.replace("nats://", "tls://"),
        tls=context,
        user_credentials=str(authority.creds_path("admin")),
        allow_reconnect=False,
    )
    await nc.close()
