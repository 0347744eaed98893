"""An executor's base requirements (``--base-requirements FILE``): every task environment gets
them under the orchestration's own pins (a pin of another version wins), an orchestration
without requirements gets them alone, and a file that cannot be used stops the executor in one
line with exit code 2. Packages come from a loopback PEP 503 index (the operator's
TASKBUS_INDEX_URL), never PyPI."""

from __future__ import annotations

import asyncio
import functools
import http.server
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sdk
from broker.connection import Bus
from broker.errors import ExitCode
from executor.environments import env_key
from tests.helpers import Daemon, daemon_env, make_wheel, make_zip, wait_for_executors

PRINT_VERSIONS = """
import importlib.util
import basepkg
print("basepkg", basepkg.VERSION)
if importlib.util.find_spec("otherpkg"):
    import otherpkg
    print("otherpkg", otherpkg.VERSION)
"""


@pytest.fixture
def index_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A loopback PEP 503 index (http.server's folder listings) with basepkg 1.0 and 2.0 and
    otherpkg 1.0, set as the operator's TASKBUS_INDEX_URL for the executors a test starts."""
    simple = tmp_path / "index" / "simple"
    for name, versions in (("basepkg", ("1.0", "2.0")), ("otherpkg", ("1.0",))):
        (simple / name).mkdir(parents=True)
        for version in versions:
            make_wheel(simple / name, name, f"VERSION = {version!r}\n", version)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(simple.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    monkeypatch.setenv("TASKBUS_INDEX_URL", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_output(wl: sdk.Client, name: str, files: dict[str, str]) -> list[str]:
    """Upload ``files``, run once, wait for success; the run's own output lines."""
    orch = wl.upload_orchestration(bytes_buffer=make_zip(files), name=name)
    orch.wait_until_ready(timeout=120)
    task = orch.run_once(name=name)
    status = task.wait(timeout=120)
    lines = [line.partition(" ")[2] for line in task.last_runs()[0].logs()]
    assert status == "success", lines
    return [line for line in lines if not line.startswith("taskbus:")]


async def test_the_base_is_layered_under_the_orchestrations_pins(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    index_url: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    base = tmp_path / "base.txt"
    base.write_text("basepkg==1.0\n")
    executor = start_daemon(
        "executor", "--url", nats_url, "--work-dir", str(tmp_path / "executor"),
        "--base-requirements", str(base),
    )  # fmt: skip
    await wait_for_executors(bus, 1)
    assert f"base requirements from {base} under every run's own: basepkg==1.0" in (
        executor.output()
    )

    def runs() -> None:
        with sdk.Client(nats_url) as wl:
            # No requirements: the base alone (not the executor's interpreter, which has none).
            assert run_output(wl, "bare", {"main.py": PRINT_VERSIONS}) == ["basepkg 1.0"]
            # A pin of another version wins over the base's.
            pinned = {"main.py": PRINT_VERSIONS, "requirements.txt": "basepkg==2.0\n"}
            assert run_output(wl, "pinned", pinned) == ["basepkg 2.0"]
            # Requirements that do not mention the base's packages get them under their own.
            other = {"main.py": PRINT_VERSIONS, "requirements.txt": "otherpkg==1.0\n"}
            assert run_output(wl, "other", other) == ["basepkg 1.0", "otherpkg 1.0"]
            # The base-only environment is cached and shared like any other.
            again = wl.upload_orchestration(
                bytes_buffer=make_zip({"main.py": PRINT_VERSIONS, "x.txt": "another zip"}),
                name="bare-again",
            )
            again.wait_until_ready(timeout=120)
            task = again.run_once(name="bare-again")
            assert task.wait(timeout=120) == "success"
            assert any("cache hit" in line for line in task.last_runs()[0].logs())

    await asyncio.to_thread(runs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("basepkg==1.0\n-e .\n", "base.txt line 2: '-e .'"),
        ("nosuchpkg==1.0\n", "could not be resolved: line 1: 'nosuchpkg' was not found"),
        (None, "base.txt: cannot read it (No such file or directory)"),
    ],
    ids=["refused line", "unknown package", "missing file"],
)
def test_a_base_file_that_cannot_be_used_stops_the_executor_in_one_line(
    text: str | None, expected: str, nats_url: str, tmp_path: Path, index_url: str
) -> None:
    base = tmp_path / "base.txt"
    if text is not None:
        base.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "executor", "--url", nats_url, "--work-dir", str(tmp_path / "ex"),
         "--base-requirements", str(base)],
        env=daemon_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "--base-requirements" in errors[0], done.stderr
    assert expected in errors[0], errors[0]


def test_without_a_base_an_environment_keeps_its_key() -> None:
    """Environments cached before base requirements existed stay valid; a base changes the key."""
    lock = "basepkg==2.0\n"
    assert env_key(lock) == env_key(lock, "")
    assert env_key(lock, "basepkg==1.0\n") not in (env_key(lock), env_key(lock, "other==1\n"))
