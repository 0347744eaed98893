"""Code written for the reference (Wallaroo) SDK runs unchanged: ``import wallaroo`` inside a
task is the SDK unless the task brings its own, ``WALLAROO_TASK_ID`` is set, the reference's
spellings and exception names exist, every argument error is a ``TaskbusError``, the export
list agrees with itself and with API.md, and skipped instants read as ``skipped``."""

from __future__ import annotations

import ast
import asyncio
import builtins
import functools
import http.server
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

import sdk
import sdk.object
from broker import catalog, dispatch
from broker.connection import Bus, connect
from broker.models import RunRecord, utcnow
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from broker.status import RunStatus, TaskKind
from console.cells import RUN_STYLES
from sdk.cli import main
from tests.helpers import REPO, Daemon, make_wheel, make_zip, wait_for_executors

API_MD = Path("/work/shared/API.md")
# Names API.md declares that later work builds (workspaces, connections, the auth layer):
# remove a name from here when it is exported.
NOT_YET_BUILT = frozenset(
    {
        "Connection",
        "ConnectionList",
        "ConnectionNotFound",
        "InvalidWorkspace",
        "PermissionDenied",
        "Workspace",
        "WorkspaceList",
        "WorkspaceNotFound",
    }
)

REFERENCE_MAIN = """
import os
import wallaroo
from wallaroo.object import EntityNotFoundError
import sdk

wl = wallaroo.Client()
print("in_task", wl.in_task(), wallaroo.in_task())
print("args", wl.task_args()["n"])
print("task id", os.environ["WALLAROO_TASK_ID"] == os.environ["TASKBUS_TASK_ID"])
print("same", wallaroo.Client is sdk.Client, wallaroo.object is sdk.object,
      wallaroo.ArbexStatus is sdk.TaskStatus)
print("name", wl.get_task_by_id(os.environ["WALLAROO_TASK_ID"]).name())
try:
    wl.get_task_by_id("00000000-0000-4000-8000-000000000000")
except EntityNotFoundError as exc:
    print("not found", type(exc).__name__)
"""

# Which folders on the path hold a `wallaroo` package, in path order, and which one imported.
WHICH_WALLAROO = """
import os, sys
import wallaroo
holders = [p for p in sys.path if os.path.isdir(os.path.join(p or ".", "wallaroo"))]
print("imported", getattr(wallaroo, "ORIGIN", "shim"))
print("holders", len(holders))
print("shim last", holders[-1].endswith(os.path.join("sdk", "_reference")))
"""


def messages(lines: list[str]) -> list[str]:
    return [line.partition(" ")[2] for line in lines]


def task_output(wl: sdk.Client, zip_bytes: bytes, **run: object) -> tuple[sdk.Task, list[str]]:
    """Upload, run once, wait; the run's stdout and stderr messages (no taskbus: lines)."""
    orch = wl.upload_orchestration(bytes_buffer=zip_bytes, name="compat")
    orch.wait_until_ready(timeout=120)
    task = orch.run_once(**run)  # type: ignore[arg-type]
    status = task.wait(timeout=60)
    lines = [m for m in messages(task.last_runs()[0].logs()) if not m.startswith("taskbus:")]
    assert status == "success", lines
    return task, lines


@pytest.fixture(params=["zygote", "spawn"])
async def any_executor(
    request: pytest.FixtureRequest,
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> Daemon:
    """A real executor with either launcher (a forked zygote child, or a fresh interpreter)."""
    extra = ["--no-zygote"] if request.param == "spawn" else []
    daemon = start_daemon(
        "executor", "--url", nats_url, "--work-dir", str(tmp_path / "executor"), *extra
    )
    await wait_for_executors(bus, 1)
    return daemon


@pytest.fixture(autouse=True)
def _outside_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("TASKBUS_TASK_ID", "TASKBUS_ARGS_FILE", "WALLAROO_TASK_ID"):
        monkeypatch.delenv(variable, raising=False)


# --- import wallaroo inside a task -----------------------------------------------------------
def test_reference_code_runs_unchanged_inside_a_task(nats_url: str, any_executor: Daemon) -> None:
    with sdk.Client(nats_url) as wl:
        task, lines = task_output(wl, make_zip({"main.py": REFERENCE_MAIN}), json_args={"n": 7})
    assert lines == [
        "in_task True True",
        "args 7",
        "task id True",
        "same True True True",
        "name compat",  # run_once without a name: the orchestration's
        "not found TaskNotFound",
    ]
    assert task.name() == "compat"


def test_a_zip_s_own_wallaroo_package_wins_over_the_shim(
    nats_url: str, any_executor: Daemon
) -> None:
    files = {"main.py": WHICH_WALLAROO, "wallaroo/__init__.py": "ORIGIN = 'zip'\n"}
    with sdk.Client(nats_url) as wl:
        _, lines = task_output(wl, make_zip(files), name="own")
    assert lines == ["imported zip", "holders 2", "shim last True"]


@pytest.fixture
def local_index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A package index on loopback (PEP 503 pages: http.server's folder listings): the
    operator's index, given to the executor as TASKBUS_INDEX_URL."""
    root = tmp_path / "index"
    (root / "simple").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/", root / "simple"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_in_an_environment_the_real_package_wins_and_the_shim_is_the_fallback(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    local_index: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requirements that install a package named ``wallaroo`` (a local stand-in for the real
    one, on the operator's index) get it; requirements without it still get the shim, after
    the environment."""
    index_url, simple = local_index
    for name, init in (("wallaroo", "ORIGIN = 'requirements'\n"), ("notwallaroo", "")):
        (simple / name).mkdir()
        make_wheel(simple / name, name, init)
    monkeypatch.setenv("TASKBUS_INDEX_URL", index_url)
    start_daemon("executor", "--url", nats_url, "--work-dir", str(tmp_path / "executor"))
    await wait_for_executors(bus, 1)
    await asyncio.to_thread(real_package_wins, nats_url)


def real_package_wins(nats_url: str) -> None:
    with sdk.Client(nats_url) as wl:
        with_real = {"main.py": WHICH_WALLAROO, "requirements.txt": "wallaroo==0.0.1\n"}
        _, lines = task_output(wl, make_zip(with_real), name="real")
        assert lines == ["imported requirements", "holders 2", "shim last True"]
        without = {"main.py": WHICH_WALLAROO, "requirements.txt": "notwallaroo==0.0.1\n"}
        _, lines = task_output(wl, make_zip(without), name="fallback")
        assert lines == ["imported shim", "holders 1", "shim last True"]


def test_an_environment_built_before_the_shim_gets_it_on_its_next_use(tmp_path: Path) -> None:
    from executor.environments import PTH_NAME, pth_text, write_pth

    site_packages = tmp_path / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = site_packages / "site-packages"
    site_packages.mkdir(parents=True)
    (site_packages / PTH_NAME).write_text("/old/sdk/paths\n")
    write_pth(tmp_path)
    assert (site_packages / PTH_NAME).read_text() == pth_text()
    assert pth_text().splitlines()[-1].startswith("import sys; sys.path[:] = ")


# --- the reference's spellings ---------------------------------------------------------------
def test_client_accepts_the_reference_keywords_and_bounds_each_request(
    nats_url: str, nats_server: EmbeddedServer
) -> None:
    with sdk.Client(
        nats_url, api_endpoint="http://api-lb:8080", auth_type="sso", request_timeout=0.5
    ) as wl:
        assert wl.list_tasks() == []
        assert nats_server.process is not None
        os.kill(nats_server.process.pid, signal.SIGSTOP)  # the server stops answering
        try:
            started = time.monotonic()
            with pytest.raises(sdk.RequestTimeout, match=r"request_timeout=0\.5 s") as caught:
                wl.list_orchestrations()
            assert time.monotonic() - started < 3.0
        finally:
            os.kill(nats_server.process.pid, signal.SIGCONT)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, sdk.object.CommunicationError)
        assert wl.list_tasks() == []  # usable again once the server answers


def test_last_runs_filters_by_status_none_all_and_skipped(
    nats_url: str, executor: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with sdk.Client(nats_url) as wl:
        orch = wl.upload_orchestration(bytes_buffer=make_zip({"main.py": "print(1)\n"}))
        orch.wait_until_ready(timeout=60)
        task = orch.run_scheduled("nightly", "0 3 * * *")
        instant = (utcnow() - timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
        # What the scheduler records for an instant missed during its downtime.
        skipped = asyncio.run(_record_skipped(nats_url, task.id(), instant))
        assert skipped is not None and skipped.status is RunStatus.SKIPPED
        for status in (None, "all", "skipped"):
            [run] = task.last_runs(status=status)
            assert run.status() == "skipped" and run.reason() == "missed"
        assert task.last_runs(status="killed") == []
        with pytest.raises(ValueError, match="status must be None or one of all, pending") as bad:
            task.last_runs(status="cancelled")
        assert isinstance(bad.value, sdk.TaskbusError)
        task.kill()
    assert main(["runs", task.id(), "--status", "skipped", "--json", "--url", nats_url]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert shown["status"] == "skipped" and shown["reason"] == "missed"


async def _record_skipped(url: str, task_id: str, instant: datetime) -> RunRecord | None:
    bus = await connect(ConnectSettings(urls=[url]))
    try:
        task = await catalog.get_task(bus, task_id)
        assert task.kind is TaskKind.SCHEDULED
        return await dispatch.record_skipped_run(bus, task, instant, "missed")
    finally:
        await bus.close()


def test_running_an_orchestration_that_failed_packaging_raises_the_reference_error(
    nats_url: str, executor: Daemon
) -> None:
    # A well-formed requirement no index has: packaging fails at resolution.
    files = {"main.py": "print(1)\n", "requirements.txt": "taskbus-no-such-package-4711==0.0.1\n"}
    with sdk.Client(nats_url) as wl:
        broken = wl.upload_orchestration(bytes_buffer=make_zip(files))
        with pytest.raises(sdk.OrchestrationNotReady):
            broken.wait_until_ready(timeout=60)
        for run in (
            lambda: broken.run_once(),
            lambda: broken.run_scheduled("s", "* * * * *"),
            lambda: broken.run_continuously("c"),
        ):
            with pytest.raises(sdk.OrchestrationDeployOneshotFailed, match="failed packaging"):
                run()
        with pytest.raises(sdk.OrchestrationNotReady):  # as before
            broken.run_once("again")


def test_the_reference_exception_names_are_taskbus_errors() -> None:
    assert sdk.ArbexStatus is sdk.TaskStatus
    assert issubclass(sdk.OrchestrationDeployOneshotFailed, sdk.TaskbusError)
    for name in sdk.object.__all__:
        assert issubclass(getattr(sdk.object, name), sdk.TaskbusError), name
    assert {
        "EntityNotFoundError",
        "RequiredAttributeMissing",
        "InvalidNameError",
        "CommunicationError",
        "ModelConversionError",
        "ModelConversionTimeoutError",
        "DeploymentError",
        "LimitError",
        "UserLimitError",
    } == set(sdk.object.__all__)
    for not_found in (sdk.TaskNotFound, sdk.OrchestrationNotFound):
        assert issubclass(not_found, sdk.object.EntityNotFoundError)
        assert issubclass(not_found, LookupError)
    assert issubclass(sdk.NotConnected, sdk.object.CommunicationError)
    assert issubclass(sdk.object.InvalidNameError, ValueError)


def test_every_argument_error_is_a_taskbus_error(nats_url: str) -> None:
    bad_calls: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: sdk.Client(nats_url, request_timeout="soon"), TypeError),  # type: ignore[arg-type]
        (lambda: sdk.Client(nats_url, request_timeout=0), ValueError),
    ]
    with sdk.Client(nats_url) as wl:
        bad_calls += [
            (lambda: wl.get_task_by_id("not-an-id"), ValueError),
            (lambda: wl.upload_orchestration(bytes_buffer=12), TypeError),  # type: ignore[arg-type]
            (lambda: wl.get_orchestration(""), ValueError),
        ]
        for call, kind in bad_calls:
            with pytest.raises(kind) as caught:
                call()
            assert isinstance(caught.value, sdk.TaskbusError), caught.value


def test_no_bare_argument_errors_in_the_sdk() -> None:
    """The SDK raises argument errors as TaskbusErrors (the CLI's own parsing aside)."""
    found = []
    for path in sorted((REPO / "sdk").rglob("*.py")):
        if "cli" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name) and target.id in ("ValueError", "TypeError"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


# --- the export list -------------------------------------------------------------------------
def declared_in_api_md() -> set[str]:
    text = API_MD.read_text()
    found = set(re.findall(r"`([A-Z][A-Za-z]+)`", text))
    found |= set(re.findall(r"\bsdk\.([A-Za-z_]\w*)", text))
    found |= set(re.findall(r"^## ([A-Z][A-Za-z]+)$", text, re.MULTILINE))
    return {n for n in found if not hasattr(builtins, n)} - {"Display", "Errors", "CLI"}


def type_checking_imports() -> set[str]:
    tree = ast.parse((REPO / "sdk" / "__init__.py").read_text())
    [block] = [n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n)]
    return {
        alias.asname or alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_every_exported_name_is_importable_and_declared_once() -> None:
    exported = set(sdk.__all__)
    assert len(exported) == len(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name
    assert set(sdk._LAZY) == exported - {"in_task", "task_args"}
    assert type_checking_imports() == (exported - {"in_task", "task_args"}) | {"object"}
    plumbing = {"annotations", "import_module", "TYPE_CHECKING", "Any"}
    public = {n for n in dir(sdk) if not n.startswith("_") and n not in plumbing}
    public = {n for n in public if not isinstance(getattr(sdk, n), ModuleType)}
    assert public - exported == set()  # a public name that is not declared
    namespace: dict[str, object] = {}
    exec("from sdk import *", namespace)
    assert "object" not in namespace  # the builtin is never shadowed


def test_every_name_api_md_declares_is_exported() -> None:
    declared = declared_in_api_md()
    assert {"ArbexStatus", "OrchestrationDeployOneshotFailed", "TaskRun", "Client"} <= declared
    assert declared - NOT_YET_BUILT - set(sdk.__all__) == set()
    assert NOT_YET_BUILT <= declared  # a name dropped from API.md is dropped here too


def test_a_skipped_run_has_a_console_style() -> None:
    assert set(RUN_STYLES) == set(RunStatus)
    assert RUN_STYLES[RunStatus.SKIPPED] == "muted"
