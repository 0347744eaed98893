"""Bad input gets a clear Taskbus error, never a raw one (issue 10; the server side checks what
the SDK checks).

Zips: every refusal the SDK makes before upload is made again by a real executor before it
unpacks anything, for zips uploaded with raw nats (skipping the SDK's check). Arguments too big
or too deep for the bus, and logs read after their stream was deleted, say what happened.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import sdk
from broker import archive, names, store
from broker.connection import Bus
from broker.errors import InvalidJsonArgs, InvalidOrchestration, LogsUnavailable, TaskbusError
from broker.status import OrchestrationStatus, RunStatus
from sdk.cli import main
from tests.helpers import Daemon, make_zip
from tests.test_executor import run_once, wait_run
from tests.test_packaging_safety import raw_upload, settled
from tests.test_sdk import on_bus

GIB = 1 << 30
MAIN = "print('hello')\n"


# --- zips that must be refused -------------------------------------------------------------
def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes | str]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name: we want one
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as handle:
            for info, content in entries:
                handle.writestr(info, content)
    return buffer.getvalue()


def _typed(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o777) << 16
    return info


def _encrypted(data: bytes, name: str) -> bytes:
    """Set the 'encrypted' flag of ``name`` in its local and central headers (zipfile cannot
    write encrypted entries; reading one raises a raw RuntimeError)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as handle:
        info = handle.getinfo(name)
        local = info.header_offset + 6
        out[local : local + 2] = struct.pack("<H", info.flag_bits | 1)
        offset = handle.start_dir
        for entry in handle.infolist():
            if entry.filename == name:
                out[offset + 8 : offset + 10] = struct.pack("<H", entry.flag_bits | 1)
            size = struct.unpack("<HHH", data[offset + 28 : offset + 34])
            offset += 46 + sum(size)
    return bytes(out)


def _zeros(size: int) -> bytes:
    return bytes(size)


BAD_ZIPS: dict[str, tuple[bytes, str]] = {
    "nul": (
        _zip([("main.py", MAIN), ("main.pyZ.txt", "x")]).replace(b"main.pyZ", b"main.py\0"),
        "control character '\\x00'",
    ),
    "escape": (_zip([("main.py", MAIN), ("\x1b]52;c;x\x07.py", "x")]), "control character"),
    "c1": (_zip([("main.py", MAIN), ("a\x9bb.py", "x")]), "control character '\\x9b'"),
    "duplicate": (_zip([("main.py", MAIN), ("main.py", "print('other')\n")]), "'main.py' twice"),
    "symlink": (
        _zip([("main.py", MAIN), (_typed("data.txt", stat.S_IFLNK), "/etc/passwd")]),
        "symbolic link",
    ),
    "fifo": (_zip([("main.py", MAIN), (_typed("pipe", stat.S_IFIFO), "")]), "not a regular"),
    "parent": (_zip([("main.py", MAIN), ("../evil.py", "x")]), "'..'"),
    "absolute": (_zip([("main.py", MAIN), ("/tmp/evil.py", "x")]), "absolute"),
    "encrypted": (
        _encrypted(_zip([("main.py", MAIN), ("requirements.txt", "six\n")]), "requirements.txt"),
        "'requirements.txt' is encrypted",
    ),
    "ratio": (_zip([("main.py", MAIN), ("zeros.bin", _zeros(8 << 20))]), "zip bomb"),
    # Each entry under the per-entry minimum, together still a bomb.
    "total_ratio": (
        _zip([("main.py", MAIN), *((f"z{i}.bin", _zeros(900 << 10)) for i in range(4))]),
        "The zip unpacks to",
    ),
}


@pytest.fixture(scope="module")
def gib_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """1 GiB of zeros in ~4.5 MB (deflate level 1, streamed: never 1 GiB in memory)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as handle:
        handle.writestr("main.py", MAIN)
        with handle.open("zeros.bin", "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(GIB // len(block)):
                entry.write(block)
    return path.read_bytes()


# What the SDK refused before too (links, '..', absolute paths) is in test_broker.py.
@pytest.mark.parametrize("case", sorted(set(BAD_ZIPS) - {"symlink", "parent", "absolute"}))
def test_the_sdk_refuses_a_bad_zip_naming_the_problem(case: str) -> None:
    data, problem = BAD_ZIPS[case]
    with pytest.raises(InvalidOrchestration) as refused:
        archive.inspect(data)
    assert problem in str(refused.value), str(refused.value)


def test_a_gib_bomb_is_refused_by_its_ratio(gib_bomb: bytes, nats_url: str) -> None:
    assert len(gib_bomb) < 8 << 20
    with sdk.Client(nats_url) as client:
        with pytest.raises(InvalidOrchestration, match=r"zeros\.bin' unpacks to 1073741824 bytes"):
            client.upload_orchestration(gib_bomb, name="bomb")
        assert len(client.list_orchestrations()) == 0


def _trees(tmp_path: Path) -> list[str]:
    return os.listdir(tmp_path / "executor" / "trees")


async def test_the_executor_refuses_bad_zips_before_unpacking_anything(
    bus: Bus, executor: Daemon, tmp_path: Path, gib_bomb: bytes
) -> None:
    cases = {**BAD_ZIPS, "gib": (gib_bomb, "zeros.bin' unpacks to 1073741824 bytes")}
    uploads = {case: await raw_upload(bus, data, "") for case, (data, _) in cases.items()}
    for case, record in uploads.items():
        done = await settled(bus, record.id)
        assert done.status == OrchestrationStatus.ERROR, case
        assert done.error.startswith("could not extract the orchestration zip: "), done.error
        assert cases[case][1] in done.error, (case, done.error)
    assert _trees(tmp_path) == []  # not one tree, nor a half-written staging folder


async def test_a_run_of_a_forged_ready_record_fails_instead_of_unpacking(
    bus: Bus, executor: Daemon, tmp_path: Path
) -> None:
    """A record marked ready by hand (skipping packaging too): the run's own extraction refuses."""
    record = await settled(bus, (await raw_upload(bus, make_zip({"main.py": MAIN}), "")).id)
    assert record.status == OrchestrationStatus.READY
    assert len(_trees(tmp_path)) == 1
    data, problem = BAD_ZIPS["ratio"]
    sha = archive.sha256(data)
    await bus.zips.put(names.DEFAULT_WORKSPACE, sha, data)
    forged = msgspec.structs.replace(record, sha=sha, size=len(data))
    await store.put(bus.orchestrations, record.key, forged)

    run = await wait_run(bus, (await run_once(bus, forged)).id)
    assert run.status == RunStatus.FAILURE
    assert problem in run.reason and "could not extract" in run.reason, run.reason
    assert _trees(tmp_path) == [record.sha]  # only the good one


# --- json_args -----------------------------------------------------------------------------
def _deep(levels: int) -> dict[str, object]:
    """``levels`` containers around an empty one, dicts and lists in turn."""
    value: object = {}
    for index in range(levels):
        value = {"a": value} if index % 2 else [value]
    return {"top": value}


@pytest.fixture
def client(nats_url: str) -> Iterator[sdk.Client]:
    with sdk.Client(nats_url) as wl:
        yield wl


def test_json_args_too_big_or_too_deep_are_clear_errors(client: sdk.Client) -> None:
    orch = client.upload_orchestration(make_zip({"main.py": MAIN}), name="hello")
    big = {"blob": "x" * 20_000_000}
    deep = _deep(10_000)
    starts = [
        lambda args: orch.run_once("t", args),
        lambda args: orch.run_scheduled("s", "0 3 * * *", args),
        lambda args: orch.run_continuously("c", args),
    ]
    for start in starts:
        with pytest.raises(InvalidJsonArgs, match="json_args are 20000012 bytes as JSON; at most"):
            start(big)
        with pytest.raises(TaskbusError, match="nested more than 100 levels deep") as deeper:
            start(deep)
        assert isinstance(deeper.value, ValueError)
    assert len(client.list_tasks()) == 0
    # Under the limits, the same shapes are fine.
    task = orch.run_once("ok", {"blob": "x" * 1000, **_deep(names.MAX_JSON_ARGS_DEPTH - 2)})
    assert task.name() == "ok"


def test_taskbus_run_args_too_big_or_too_deep_exit_2_with_one_line(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", nats_url]
    hello = tmp_path / "hello.zip"
    hello.write_bytes(make_zip({"main.py": MAIN}))
    assert main(["upload", str(hello), "--name", "hello", *url]) == 0
    big = tmp_path / "big.json"
    big.write_text('{"blob": "' + "x" * 20_000_000 + '"}')
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' * 10_000 + "1" + "}" * 10_000)
    capsys.readouterr()
    for path, message in [(big, "at most 524288 are allowed"), (deep, "nested too deeply")]:
        assert main(["run", "hello", "--name", "t", "--args", f"@{path}", *url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("taskbus: error: ") and message in err, err
        assert "\n" not in err
    assert main(["tasks", "--json", *url]) == 0
    assert capsys.readouterr().out.strip() == "[]"


# --- logs of a deleted stream ----------------------------------------------------------------
def test_logs_after_the_logs_stream_was_deleted_say_so(client: sdk.Client) -> None:
    # (A new connection provisions the stream again today, so `taskbus logs` finds it empty.)
    orch = client.upload_orchestration(make_zip({"main.py": MAIN}), name="hello")
    task = orch.run_once("t")
    run = task.last_runs()[0]

    async def delete(bus: Bus) -> None:
        await bus.js.delete_stream(names.LOGS_STREAM)

    on_bus(client, delete)
    gone = re.escape(f"The server has no {names.LOGS_STREAM} stream (it was deleted)")
    with pytest.raises(LogsUnavailable, match=gone):
        run.logs()
    with pytest.raises(LogsUnavailable, match=gone):
        run.logs(5)
    with pytest.raises(LogsUnavailable, match=gone):
        next(iter(run.logs(follow=True)))
