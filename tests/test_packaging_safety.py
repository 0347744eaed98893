"""Safe packaging: requirements.txt holds PEP 508 lines only, the index is the operator's,
``--hash`` pins are enforced, and no uv output reaches a user.

Refusals are checked where a user meets them (the SDK's upload) and where they are enforced
(a real executor packaging a zip uploaded with raw nats, skipping the SDK's check). A real
HTTP listener on loopback stands for an index the uploader controls: it fails the test if any
request reaches it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

import sdk
from broker import archive, catalog, dispatch, names, requirements, store
from broker.connection import Bus
from broker.errors import InvalidOrchestration
from broker.models import OrchestrationRecord, utcnow
from broker.status import ORCHESTRATION_SETTLED, OrchestrationStatus, RunStatus
from executor.environments import EnvironmentBuildError, Environments
from tests.helpers import Daemon, make_zip, wait_for_executors
from tests.test_executor import log_lines, run_once, texts, wait_run

# six 1.16.0's files on PyPI (the wheel, then the sdist): small, and the other env tests use it.
SIX_WHEEL = "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
SIX_SDIST = "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926"
WRONG = "sha256:" + "0" * 64
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
SIX_MAIN = "import six\nprint('six', six.__version__)\n"


class Listener:
    """A real HTTP server on loopback recording every request line; answers 404."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append("(connection)")
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            self.requests[-1] = head.decode(errors="replace").splitlines()[0]
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with Listener() as server:
        yield server


def hostile_requirements(url: str) -> list[tuple[str, str]]:
    """(requirements.txt, what the refusal names): every way to reach ``url`` from the file."""
    return [
        (f"six==1.16.0\n--index-url {url}/simple\n", "line 2: '--index-url"),
        (f"# pinned\n\n-i {url}/simple\nsix\n", "line 3: '-i"),
        (f"six\n--extra-index-url={url}/simple\n", "'--extra-index-url'"),
        (f"--find-links {url}/wheels\nsix\n", "line 1: '--find-links"),
        (f"six==1.16.0 --index-url={url}/simple\n", "only --hash=sha256:<hex> may follow"),
        (f"six @ {url}/six-1.16.0-py2.py3-none-any.whl\n", "is a direct reference"),
        (f"{url}/six-1.16.0-py2.py3-none-any.whl\n", "is a URL"),
    ]


# --- the validator, line by line ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("-r other.txt", "'-r'"),
        ("-c constraints.txt", "'-c'"),
        ("-e .", "'-e'"),
        ("--requirement=other.txt", "'--requirement'"),
        ("--trusted-host example.com", "'--trusted-host'"),
        ("--no-index", "'--no-index'"),
        ("--pre", "'--pre'"),
        ("./pkg", "local path"),
        ("/abs/pkg", "local path"),
        ("../x", "local path"),
        ("~/pkg", "local path"),
        ("pkg.whl", "local archive"),
        ("six-1.16.0.tar.gz", "local archive"),
        ("file:///etc/passwd", "file: URL"),
        ("six @ file:///etc/passwd", "file: URL"),
        ("six @ https://example.com/six.whl", "direct reference"),
        ("git+https://example.com/six.git", "is a URL"),
        ("six==${VERSION}", "environment variable"),
        ("six==1.16.0 --hash=md5:abcd", "malformed hash"),
        ("six==1.16.0 --hash=sha256:abcd", "malformed hash"),
        ("six==1.16.0 --no-deps", "'--no-deps'"),
        ("--hash=" + SIX_WHEEL, "without a requirement"),
        ("six ==", "not a PEP 508 requirement"),
    ],
)
def test_every_refused_line_is_named_with_its_number(line: str, problem: str) -> None:
    text = f"# our pins\nmsgspec>=0.18\n{line}\nsix\n"
    with pytest.raises(InvalidOrchestration, match=r"requirements\.txt line 3: ") as refused:
        requirements.parse(text)
    assert problem in str(refused.value)
    # The SDK's check of a zip says the same.
    with pytest.raises(InvalidOrchestration, match=r"requirements\.txt line 3: ") as inspected:
        archive.inspect(make_zip({"main.py": "", "requirements.txt": text}))
    assert str(inspected.value) == str(refused.value)


def test_requirement_lines_comments_markers_and_hash_continuations_are_accepted() -> None:
    text = (
        "# a comment\n\n"
        "requests[socks] >= 2.31, < 3  # trailing comment\n"
        'tomli; python_version < "3.11"\n'
        "six==1.16.0 \\\n"
        f"    --hash={SIX_WHEEL} \\\n"
        f"    --hash={SIX_SDIST.upper().replace('SHA256', 'sha256')}\n"
    )
    with pytest.raises(InvalidOrchestration, match="line 3: 'requests' has no --hash, but line 5"):
        requirements.parse(text)  # hash-checking is all or nothing, as in pip
    lines = requirements.parse(text.replace("requests", "# requests").replace("tomli", "# tomli"))
    assert [(line.number, line.name) for line in lines] == [(5, "six")]
    assert lines[0].hashes == (SIX_WHEEL, SIX_SDIST)
    assert requirements.render(lines, with_hashes=False) == "six==1.16.0\n"
    again = requirements.parse(requirements.render(lines))  # a lock reads back the same
    assert [(line.requirement, line.hashes) for line in again] == [
        (lines[0].requirement, lines[0].hashes)
    ]
    plain = requirements.parse(text.replace(" \\\n    --hash", " # --hash"))
    assert [(line.number, str(line.requirement)) for line in plain] == [
        (3, "requests[socks]<3,>=2.31"),
        (4, 'tomli; python_version < "3.11"'),
        (5, "six==1.16.0"),
    ]
    with pytest.raises(InvalidOrchestration, match="must pin one version with =="):
        requirements.parse(f"six>=1.16 --hash={SIX_WHEEL}\n")


# --- the index is the operator's ---------------------------------------------------------------
async def raw_upload(
    bus: Bus, files: dict[str, str | bytes] | bytes, requirements_text: str | None = None
) -> OrchestrationRecord:
    """Upload as the SDK does (blob, record, packaging request) but skip its check of the zip,
    as a client speaking raw nats would."""
    data = files if isinstance(files, bytes) else make_zip(files)
    if requirements_text is None and not isinstance(files, bytes):
        found = files.get("requirements.txt", "")
        requirements_text = found if isinstance(found, str) else found.decode()
    sha = archive.sha256(data)
    await bus.zips.put(names.DEFAULT_WORKSPACE, sha, data)
    now = utcnow()
    record = OrchestrationRecord(
        id=catalog.new_id(), name="raw", file_name="raw.zip", sha=sha, size=len(data),
        entrypoint="main.py", requirements=requirements_text or "", created_at=now,
        updated_at=now,
    )  # fmt: skip
    await store.create(bus.orchestrations, record.key, record)
    await dispatch.request_packaging(bus, record)
    return record


async def settled(bus: Bus, orchestration_id: str, timeout_s: float = 60.0) -> OrchestrationRecord:
    async with asyncio.timeout(timeout_s):
        async for _, record in store.watch(
            bus.orchestrations, OrchestrationRecord, f"*.{orchestration_id}"
        ):
            if record is not None and record.status in ORCHESTRATION_SETTLED:
                return record
    raise AssertionError("unreachable")


async def test_the_sdk_refuses_every_index_option_and_url_before_upload(
    nats_url: str, listener: Listener
) -> None:
    async with sdk.AsyncClient(nats_url) as client:
        for text, problem in hostile_requirements(listener.url):
            zipped = make_zip({"main.py": SIX_MAIN, "requirements.txt": text})
            with pytest.raises(InvalidOrchestration, match=r"requirements\.txt line") as refused:
                await client.upload_orchestration(zipped, name="hostile")
            assert problem in str(refused.value), (text, str(refused.value))
        assert len(await client.list_orchestrations()) == 0
    assert listener.requests == []


async def test_packaging_refuses_what_a_raw_upload_slips_past_the_sdk(
    bus: Bus, executor: Daemon, listener: Listener, tmp_path: Path
) -> None:
    cases = hostile_requirements(listener.url)
    uploads = [
        await raw_upload(bus, {"main.py": SIX_MAIN, "requirements.txt": text}) for text, _ in cases
    ]
    # The record's copy of requirements.txt is what packaging reads: a lie there is refused too.
    liar = await raw_upload(
        bus, {"main.py": SIX_MAIN}, requirements_text=f"six\n-f {listener.url}/wheels\n"
    )
    for record, (_, problem) in [*zip(uploads, cases, strict=True), (liar, ("", "line 2: '-f"))]:
        done = await settled(bus, record.id)
        assert done.status == OrchestrationStatus.ERROR
        assert done.error.startswith("requirements.txt line"), done.error
        assert problem in done.error, done.error
        assert done.lock == ""
    assert not list((tmp_path / "executor" / "envs").glob("*/"))  # uv never ran
    assert listener.requests == []


async def test_a_forged_ready_record_cannot_smuggle_an_index_into_the_lock(
    bus: Bus, executor: Daemon, listener: Listener
) -> None:
    """The lock is uv's input at run time: a record written by hand, marked ready with a lock
    naming an index, gets a failed run, and the index is never asked."""
    record = await raw_upload(bus, {"main.py": SIX_MAIN}, requirements_text="")
    assert (await settled(bus, record.id)).status == OrchestrationStatus.READY
    forged_lock = f"six==1.16.0\n--extra-index-url {listener.url}/simple\n"
    await store.put(bus.orchestrations, record.key, _with(record, lock=forged_lock))

    run = await wait_run(bus, (await run_once(bus, record)).id)
    assert run.status == RunStatus.FAILURE
    assert "the pinned lock line 2: '--extra-index-url" in run.reason, run.reason
    assert listener.requests == []


def _with(record: OrchestrationRecord, **changes: object) -> OrchestrationRecord:
    return msgspec.structs.replace(record, status=OrchestrationStatus.READY, **changes)


async def test_the_operators_index_is_the_one_uv_asks(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    listener: Listener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(names.ENV_INDEX_URL, f"{listener.url}/simple")
    work = tmp_path / "executor"
    start_daemon("executor", "--url", nats_url, "--work-dir", str(work))
    await wait_for_executors(bus, 1)
    record = await raw_upload(bus, {"main.py": SIX_MAIN, "requirements.txt": "six==1.16.0\n"})

    done = await settled(bus, record.id)
    assert done.status == OrchestrationStatus.ERROR
    assert done.error == (
        "requirements.txt could not be resolved: line 1: 'six' was not found on the package "
        "index; check the spelling (PyPI unless the executor's operator set another index)"
    )
    assert listener.requests and all("/simple/six/" in r for r in listener.requests)


# --- --hash pins -----------------------------------------------------------------------------
async def test_hash_pins_are_kept_in_the_lock_and_a_wrong_one_fails_packaging(
    bus: Bus, executor: Daemon
) -> None:
    pinned = f"six==1.16.0 \\\n    --hash={SIX_WHEEL} \\\n    --hash={SIX_SDIST}\n"
    good = await raw_upload(bus, {"main.py": SIX_MAIN, "requirements.txt": pinned})
    wrong = await raw_upload(
        bus, {"main.py": SIX_MAIN, "requirements.txt": f"six==1.16.0 --hash={WRONG}\n"}
    )
    partial = await raw_upload(
        bus,  # pip's hash-checking mode: every package needs its line and hash
        {"main.py": "", "requirements.txt": f"# x\npython-dateutil==2.9.0.post0 --hash={WRONG}\n"},
    )

    ready = await settled(bus, good.id)
    assert ready.status == OrchestrationStatus.READY, ready.error
    assert requirements.parse(ready.lock) == requirements.parse(pinned)
    run = await wait_run(bus, (await run_once(bus, ready)).id)
    assert run.status == RunStatus.SUCCESS, run.reason
    assert texts(await log_lines(bus, run), "stdout") == ["six 1.16.0"]

    refused = await settled(bus, wrong.id)
    assert refused.status == OrchestrationStatus.ERROR
    assert refused.error == (
        "requirements.txt could not be resolved: line 1: no file of six==1.16.0 on the package "
        "index matches its --hash pins; check them (`pip hash FILE`, or `uv pip compile "
        "--generate-hashes`)"
    )
    incomplete = await settled(bus, partial.id)
    assert incomplete.status == OrchestrationStatus.ERROR
    assert "'six' is needed by another requirement but has no line of its own" in incomplete.error


async def test_installing_a_hashed_lock_checks_every_download(tmp_path: Path) -> None:
    """The install itself runs in hash-checking mode: a lock whose hash no file has fails, in
    Taskbus's words (uv's 'Expected/Computed' report stays in the executor's log)."""
    cache = Environments(tmp_path, 1 << 30)
    with pytest.raises(EnvironmentBuildError) as failed:
        await cache.acquire(f"six==1.16.0 \\\n    --hash={WRONG}\n")
    message = str(failed.value)
    assert message == (
        "installing the pinned requirements failed: line 1: a file of 'six' does not match its "
        "--hash pins; check the hashes (`pip hash FILE`, or `uv pip compile --generate-hashes`)"
    )
    assert not [p for p in os.listdir(tmp_path) if (tmp_path / p).is_dir()]  # nothing half-built


# --- no tool output in errors ------------------------------------------------------------------
async def test_a_resolution_failure_names_the_line_without_uv_output(
    bus: Bus, executor: Daemon
) -> None:
    text = "# ours\nsix==1.16.0\nsurely-not-a-package-taskbus==1.0\n"
    missing = await raw_upload(bus, {"main.py": "", "requirements.txt": text})
    conflicting = await raw_upload(bus, {"main.py": "", "requirements.txt": "six==99.0.0\n"})

    first = await settled(bus, missing.id)
    assert first.error == (
        "requirements.txt could not be resolved: line 3: 'surely-not-a-package-taskbus' was not "
        "found on the package index; check the spelling (PyPI unless the executor's operator set "
        "another index)"
    )
    second = await settled(bus, conflicting.id)
    assert second.error == (
        "requirements.txt could not be resolved: line 1: no version of 'six' matches six==99.0.0; "
        "check the names and versions on the package index (PyPI unless the executor's operator "
        "set another)"
    )
    for error in (first.error, second.error):
        # What uv prints on these failures (see the executor's log) never reaches the record.
        for uv_says in ("No solution found", "we can conclude", "cause:", "hint:", "/tmp/"):
            assert uv_says not in error
    assert "we can conclude that your requirements are unsatisfiable" in executor.output()
