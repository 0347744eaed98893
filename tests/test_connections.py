"""Data connections on real parts: encrypted on the bus, masked wherever shown, read inside a
task from the run's own file (only those of the task's workspace), and masked in stored log
lines; bad input and missing keys answered with clear errors."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import sdk
from broker import names
from broker.connection import Bus
from tests.helpers import Daemon, make_zip, wait_for_executors
from tests.test_cli import one_error_line, taskbus

PASSWORD = "hunter2-very-secret"
DETAILS = {"host": "db.internal", "port": 5432, "user": "etl", "password": PASSWORD}

READER = make_zip(
    {
        "main.py": (
            "import os, sdk\n"
            "wl = sdk.Client()\n"
            "print('key in env:', os.environ.get('TASKBUS_SECRET_KEY'))\n"
            "mode = os.stat(os.environ['TASKBUS_CONNECTIONS_FILE']).st_mode & 0o777\n"
            "print('file mode:', oct(mode))\n"
            "db = wl.get_connection('db-a')\n"
            "print('details:', db.details())\n"
            "import json\n"
            "print('as json:', json.dumps(db.details()), file=__import__('sys').stderr)\n"
            "print('type:', db.connection_type(), 'workspaces:', db.workspace_names())\n"
            "print('listed:', [c.name() for c in wl.list_connections()])\n"
            "try:\n"
            "    wl.get_connection('db-b')\n"
            "except sdk.PermissionDenied as exc:\n"
            "    print('refused:', exc)\n"
            "try:\n"
            "    wl.get_connection('ghost')\n"
            "except sdk.ConnectionNotFound as exc:\n"
            "    print('unknown:', isinstance(exc, sdk.PermissionDenied), exc)\n"
        )
    }
)


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The operator's key, in the environment of the test and of the daemons it starts."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(names.ENV_SECRET_KEY, key)
    monkeypatch.setenv(names.ENV_DATA_DIR, str(tmp_path / "data"))  # no key file to fall back on
    return key


@pytest.fixture
def client(nats_url: str, secret_key: str) -> Iterator[sdk.Client]:
    with sdk.Client(nats_url) as wl:
        yield wl


def start_executor(
    bus: Bus, url: str, tmp_path: Path, start_daemon: Callable[..., Daemon], name: str
) -> Daemon:
    return start_daemon(
        "executor", "--url", url, "--slots", "2", "--work-dir", str(tmp_path / name)
    )


def test_connections_are_encrypted_and_masked(client: sdk.Client, nats_url: str) -> None:
    db = client.create_connection("warehouse", "postgres", DETAILS)
    assert (db.name(), db.connection_type()) == ("warehouse", "postgres")
    assert db.details() == DETAILS and db.workspace_names() == ["default"]
    got = client.get_connection("warehouse")
    assert got.details() == DETAILS
    for shown in (repr(got), str(got), got._repr_html_(), repr(client.list_connections())):
        assert PASSWORD not in shown and "etl" not in shown and "****" in shown
        assert "password" in shown  # the keys stay readable
    assert got.to_dict()["details"] == dict.fromkeys(DETAILS, "****")
    assert PASSWORD not in json.dumps(got.to_dict())

    async def raw() -> bytes:
        bus = await client.aio.session.bus()
        entry = await bus.connections.get(names.connection_key("default", "warehouse"))
        return bytes(entry.value or b"")

    stored = client._portal.call(raw)
    assert b"warehouse" in stored and PASSWORD.encode() not in stored and b"etl" not in stored


def test_task_arguments_holding_a_connection_value_are_masked_where_shown(
    client: sdk.Client, nats_url: str
) -> None:
    """API.md: ``input_data()`` (connection values masked), and every repr and ``--json``."""
    client.create_connection("warehouse", "postgres", DETAILS)
    orch = client.upload_orchestration(bytes_buffer=READER, name="reader")
    args = {"dsn": f"postgres://etl:{PASSWORD}@db.internal/x", "nested": [{"pw": PASSWORD}],
            "port": 5432, "rows": 10, "note": "plain"}  # fmt: skip
    made = orch.run_once("uses-a-secret", json_args=args)
    expected = {"dsn": "postgres://etl:****@****/x", "nested": [{"pw": "****"}],
                "port": 5432, "rows": 10, "note": "plain"}  # fmt: skip
    for task in (made, client.get_task_by_id(made.id()), client.list_tasks()[0]):
        assert task.input_data() == expected
        shown = (repr(task), str(task), task._repr_html_(), json.dumps(task.to_dict()))
        for text in shown:
            assert PASSWORD not in text and "db.internal" not in text, text
    listed = taskbus("tasks", "--json", url=nats_url)
    assert listed.returncode == 0, listed.stderr
    assert PASSWORD not in listed.stdout
    assert json.loads(listed.stdout)[0]["json_args"] == expected
    # A short value is masked only whole: "main" (a database name) leaves "maintenance".
    client.create_connection("short", "postgres", {"database": "main"})
    mixed = orch.run_once("short", json_args={"db": "main", "mode": "maintenance"})
    assert mixed.input_data() == {"db": "****", "mode": "maintenance"}
    with sdk.Client(nats_url) as other:  # in a workspace without that connection: as given
        other.set_current_workspace(other.create_workspace("plain"))
        plain = other.upload_orchestration(bytes_buffer=READER).run_once("t", json_args=args)
        assert plain.input_data() == args


def test_workspaces_add_remove_and_list_connections(client: sdk.Client) -> None:
    team = client.create_workspace("team-a")
    client.create_connection("shared", "s3", {"bucket": "b", "secret": "s3cr3t-key"})
    client.set_current_workspace(team)
    client.create_connection("mine", "http", {"token": "tok-123456"})
    assert [c.name() for c in team.list_connections()] == ["mine"]
    team.add_connection("shared")
    assert [c.name() for c in team.list_connections()] == ["shared", "mine"]
    assert client.get_connection("shared").workspace_names() == ["default", "team-a"]
    default = client.get_workspace("default")
    assert [c.name() for c in default.list_connections()] == ["shared"]
    default.remove_connection("shared")
    assert default.list_connections() == []
    assert client.get_connection("shared").workspace_names() == ["team-a"]
    with pytest.raises(sdk.InvalidConnection, match="only to workspace 'team-a'"):
        team.remove_connection("shared")
    client.get_connection("shared").delete_connection()
    assert [c.name() for c in client.list_connections()] == ["mine"]
    with pytest.raises(sdk.ConnectionNotFound, match="'shared'"):
        client.get_connection("shared")
    with pytest.raises(sdk.ConnectionNotFound, match="'ghost'"):
        team.add_connection("ghost")


def test_bad_connections_are_refused_clearly(client: sdk.Client) -> None:
    client.create_connection("db", "postgres", DETAILS)
    with pytest.raises(sdk.InvalidConnection, match="exists already"):
        client.create_connection("db", "postgres", DETAILS)
    with pytest.raises(TypeError, match="must be a dict") as caught:
        client.create_connection("x", "postgres", ["not", "an", "object"])  # type: ignore[arg-type]
    assert isinstance(caught.value, sdk.TaskbusError)
    with pytest.raises(sdk.InvalidConnection, match="only JSON values"):
        client.create_connection("x", "postgres", {"when": object()})
    huge = {"blob": "x" * (names.MAX_CONNECTION_DETAILS_BYTES + 1)}
    with pytest.raises(sdk.InvalidConnection, match="at most 65536"):
        client.create_connection("x", "postgres", huge)
    with pytest.raises(sdk.InvalidConnection, match="not a valid connection name"):
        client.create_connection("a.b", "postgres", DETAILS)
    with pytest.raises(sdk.InvalidConnection, match="connection_type"):
        client.create_connection("x", "", DETAILS)
    with pytest.raises(sdk.ConnectionNotFound, match="'nope'"):
        client.get_connection("nope")
    assert [c.name() for c in client.list_connections()] == ["db"]  # nothing else stored


def test_a_missing_or_wrong_key_is_named(
    nats_url: str, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sdk.Client(nats_url) as wl:
        wl.create_connection("db", "postgres", DETAILS)
    monkeypatch.setenv(names.ENV_SECRET_KEY, Fernet.generate_key().decode())
    with sdk.Client(nats_url) as wl:
        other = wl.get_connection("db")
        with pytest.raises(sdk.SecretKeyError, match="not the key they were stored with"):
            other.details()
        assert PASSWORD not in repr(other) and "****" in repr(other)
    monkeypatch.delenv(names.ENV_SECRET_KEY)
    with sdk.Client(nats_url) as wl:
        with pytest.raises(sdk.SecretKeyError, match=names.ENV_SECRET_KEY):
            wl.create_connection("db2", "postgres", DETAILS)
        with pytest.raises(sdk.SecretKeyError, match="taskbus up"):
            wl.get_connection("db").details()
    shown = taskbus("connections", "list", "--show-secrets", url=nats_url)
    assert shown.returncode == 2 and names.ENV_SECRET_KEY in one_error_line(shown)
    assert PASSWORD not in shown.stdout
    monkeypatch.setenv(names.ENV_SECRET_KEY, "not-a-key")
    with sdk.Client(nats_url) as wl, pytest.raises(sdk.SecretKeyError, match="not a Taskbus"):
        wl.get_connection("db").details()


async def test_a_run_reads_its_workspace_connections_and_its_logs_are_masked(
    bus: Bus,
    nats_url: str,
    secret_key: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    start_executor(bus, nats_url, tmp_path, start_daemon, "executor")
    await wait_for_executors(bus, 1)
    # A notebook, in the reference's spellings only.
    async with sdk.AsyncClient(nats_url) as wl:
        ws_a = await wl.create_workspace("ws-a")
        ws_b = await wl.get_workspace("ws-b", create_if_not_exist=True)
        wl.set_current_workspace(ws_b)
        await wl.create_connection("db-b", "postgres", {"password": "b-side-secret"})
        wl.set_current_workspace(ws_a)
        await wl.create_connection("db-a", "postgres", DETAILS)
        assert [c.name() for c in await ws_a.list_connections()] == ["db-a"]
        orch = await wl.upload_orchestration(bytes_buffer=READER, name="reader")
        await orch.wait_until_ready(timeout=60)
        task = await orch.run_once("read-db", json_args={}, timeout=60)
        assert await task.wait(timeout=60) == "success"
        assert await task.workspace_id() == ws_a.id()
        run = (await task.last_runs())[0]
        lines = await run.logs()
    text = "\n".join(lines)
    assert PASSWORD not in text and "db.internal" not in text and "b-side-secret" not in text
    assert "key in env: None" in text
    # Values of 4 characters or more are masked (names.MIN_MASKED_CHARS): "etl" is not.
    assert "details: {'host': '****', 'port': ****, 'user': 'etl', 'password': '****'}" in text
    assert "file mode: 0o600" in text
    assert 'as json: {"host": "****", "port": ****, "user": "etl", "password": "****"}' in text
    assert "type: postgres workspaces: ['ws-a']" in text
    assert "listed: ['db-a']" in text
    refused = next(line for line in lines if "refused:" in line)
    assert "'db-b'" in refused and "added to this task's workspace 'ws-a'" in refused
    # An unknown name: the run cannot tell it from another workspace's connection (it may see
    # neither), so it gets the same answer, which is both errors.
    unknown = next(line for line in lines if "unknown:" in line)
    assert "unknown: True" in unknown and "'ghost'" in unknown


async def test_an_executor_without_the_key_fails_runs_that_need_it(
    bus: Bus,
    nats_url: str,
    secret_key: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with sdk.AsyncClient(nats_url) as wl:
        with_secrets = await wl.create_workspace("with-secrets")
        wl.set_current_workspace(with_secrets)
        await wl.create_connection("db-a", "postgres", DETAILS)
        monkeypatch.delenv(names.ENV_SECRET_KEY)  # the executor starts without it
        start_executor(bus, nats_url, tmp_path, start_daemon, "keyless")
        await wait_for_executors(bus, 1)
        orch = await wl.upload_orchestration(bytes_buffer=READER, name="reader")
        await orch.wait_until_ready(timeout=60)
        task = await orch.run_once("needs-key", timeout=60)
        assert await task.wait(timeout=60) == "failed"
        run = (await task.last_runs())[0]
        assert "cannot decrypt connections" in run.reason()
        assert "Traceback" not in run.reason() and PASSWORD not in run.reason()
        logs = "\n".join(await run.logs())
        assert "cannot decrypt connections" in logs and PASSWORD not in logs
        # A workspace without connections runs as before on the same executor.
        wl.set_current_workspace(await wl.get_workspace("default"))
        plain = await wl.upload_orchestration(bytes_buffer=make_zip({"main.py": "print(1)"}))
        await plain.wait_until_ready(timeout=60)
        assert await (await plain.run_once("plain", timeout=60)).wait(timeout=60) == "success"


def test_cli_connections(nats_url: str, secret_key: str, tmp_path: Path) -> None:
    details = tmp_path / "db.json"
    details.write_text(json.dumps(DETAILS))
    made = taskbus(
        "connections", "create", "db", "--type", "postgres", "--details", str(details),
        "--json", url=nats_url,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout and json.loads(made.stdout)["details"]["password"] == "****"
    listed = taskbus("connections", "--json", url=nats_url)
    assert PASSWORD not in listed.stdout
    assert [c["name"] for c in json.loads(listed.stdout)] == ["db"]
    table = taskbus("connections", "list", url=nats_url)
    assert "db" in table.stdout and "****" in table.stdout and PASSWORD not in table.stdout
    shown = taskbus("connections", "list", "--show-secrets", "--json", url=nats_url)
    assert json.loads(shown.stdout)[0]["details"] == DETAILS
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = taskbus(
        "connections", "create", "x", "--type", "t", "--details", str(bad), url=nats_url
    )
    assert refused.returncode == 2 and "must be a dict" in one_error_line(refused)
    again = taskbus(
        "connections", "create", "db", "--type", "t", "--details", str(details), url=nats_url
    )
    assert again.returncode == 2 and "exists already" in one_error_line(again)
    gone = taskbus("connections", "delete", "db", url=nats_url)
    assert gone.returncode == 0
    missing = taskbus("connections", "delete", "db", url=nats_url)
    assert missing.returncode == 2 and "No connection named 'db'" in one_error_line(missing)
    assert os.environ[names.ENV_SECRET_KEY] == secret_key


def test_taskbus_up_makes_a_private_key_file_found_without_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.authority import Authority
    from broker.secret_key import SecretKey

    monkeypatch.delenv(names.ENV_SECRET_KEY, raising=False)
    monkeypatch.setenv(names.ENV_DATA_DIR, str(tmp_path / "data"))
    with pytest.raises(sdk.SecretKeyError, match="taskbus up"):
        SecretKey.load()
    authority = Authority(tmp_path / "data" / names.AUTH_DIR).ensure_local()
    path = authority.secret_key
    assert path.stat().st_mode & 0o777 == 0o600
    token = SecretKey.load().seal(DETAILS, name="db", workspace="a")
    assert str(path) == SecretKey.load().source
    Authority(authority.root).ensure_local()  # again: the same key, never a new one
    assert SecretKey.load().open(token, name="db", workspaces=["a"]) == DETAILS
    # A token opens only for the connection and workspace it was sealed for.
    for name, workspace in (("db", "b"), ("other", "a")):
        with pytest.raises(sdk.SecretKeyError, match="sealed for connection 'db'"):
            SecretKey.load().open(token, name=name, workspaces=[workspace])


async def test_a_record_copied_to_another_workspace_does_not_decrypt_there(
    bus: Bus, secret_key: str
) -> None:
    """Someone who may write connection records but has no key copies workspace b's record
    under workspace a's key: the executor refuses to decrypt it for a's runs."""
    from broker import connections, store
    from broker.models import ConnectionRecord, OrchestrationRecord, utcnow
    from broker.secret_key import SecretKey
    from executor.secrets import Secrets, SecretsUnavailable

    key = SecretKey.load()
    await connections.create(
        bus, key, name="vault", connection_type="x", details=DETAILS, workspace="b"
    )
    stolen = await store.get(bus.connections, names.connection_key("b", "vault"), ConnectionRecord)
    assert stolen is not None
    copied = stolen[0].__class__(
        name="stolen", connection_type="x", details_token=stolen[0].details_token,
        workspaces=["a"], created_at=utcnow(),
    )  # fmt: skip
    await store.put(bus.connections, names.connection_key("a", "stolen"), copied)
    secrets = Secrets(bus, key)
    async with asyncio.TaskGroup() as tasks:
        watching = tasks.create_task(secrets.watch())
        await secrets.wait_ready()
        orchestration = OrchestrationRecord(
            id="o", name="o", file_name="o.zip", sha="0" * 64, size=1, workspace="a",
            created_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
        with pytest.raises(SecretsUnavailable, match="sealed for connection 'vault'"):
            secrets.run_file_text(orchestration)
        assert names.connection_key("a", "stolen") not in secrets._details
        watching.cancel()
