"""Orchestrations with requirements: packaging resolves a pinned lock with uv, the executor
builds one cached virtualenv per lock, the user's pins win, and `import sdk` still works."""

from __future__ import annotations

import asyncio
import sysconfig
from pathlib import Path

from broker import catalog
from broker.connection import Bus
from broker.status import OrchestrationStatus, RunStatus, TaskKind
from executor.environments import Environments
from tests.helpers import REPO, Daemon
from tests.test_executor import log_lines, run_once, texts, upload, wait_run

# six 1.17.0 is installed next to the executor: a task pinning 1.16.0 must get 1.16.0.
PINNED = """
import sys, six, sdk, msgspec
print("six", six.__version__, six.__file__.startswith(sys.prefix))
print("sdk", sdk.__name__, msgspec.__name__)
print("python", sys.executable)
"""


def folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


async def test_pinned_requirements_get_a_cached_environment(
    bus: Bus, executor: Daemon, tmp_path: Path
) -> None:
    files = {"main.py": PINNED, "requirements.txt": "six==1.16.0\n"}
    orch = await upload(bus, files)
    assert orch.status == OrchestrationStatus.READY, orch.error
    assert "six==1.16.0" in orch.lock.splitlines()
    assert orch.python.count(".") == 1  # "3.11"
    run = await wait_run(bus, (await run_once(bus, orch)).id)

    assert run.status == RunStatus.SUCCESS
    lines = await log_lines(bus, run)
    stdout = texts(lines, "stdout")
    assert stdout[0] == "six 1.16.0 True"  # from the task's venv, not the executor's 1.17.0
    assert stdout[1] == "sdk sdk msgspec"
    assert stdout[2].startswith(f"python {tmp_path / 'executor' / 'envs'}")
    assert any("cache hit" in text for text in texts(lines, "taskbus"))  # packaging built it
    [built] = folders(tmp_path / "executor" / "envs")
    marker = (built / ".taskbus-ready").stat().st_mtime_ns

    # Another orchestration with the same requirements shares the environment: nothing new.
    other = await upload(bus, {**files, "main.py": PINNED + "print('other')\n"})
    assert other.lock == orch.lock and other.id != orch.id
    again = await wait_run(bus, (await run_once(bus, other)).id)
    assert again.status == RunStatus.SUCCESS
    again_lines = await log_lines(bus, again)
    assert texts(again_lines, "stdout")[0] == "six 1.16.0 True"
    assert texts(again_lines, "stdout")[-1] == "other"
    assert any("cache hit" in text for text in texts(again_lines, "taskbus"))
    assert folders(tmp_path / "executor" / "envs") == [built]
    assert (built / ".taskbus-ready").stat().st_mtime_ns == marker


async def test_an_unresolvable_requirement_is_an_orchestration_error(
    bus: Bus, executor: Daemon
) -> None:
    files = {"main.py": "print('never')\n", "requirements.txt": "six==99.0.0\n"}
    orch = await upload(bus, files, settled=False)
    # A run asked for before packaging ended waits for it, then fails with its reason.
    task = await catalog.create_task(bus, orch, name="early", kind=TaskKind.RUN_ONCE)
    run = await wait_run(bus, task.id)
    settled = await catalog.get_orchestration(bus, orch.id)

    assert settled.status == OrchestrationStatus.ERROR
    assert settled.error.startswith("requirements.txt could not be resolved: ")
    assert "line 1: no version of 'six' matches six==99.0.0" in settled.error
    assert "unsatisfiable" not in settled.error  # uv's own words stay in the executor's log
    assert settled.lock == ""
    assert run.status == RunStatus.FAILURE
    assert run.reason == f"orchestration 'test' failed packaging: {settled.error}"


async def test_one_build_per_lock_even_when_two_ask_at_once(tmp_path: Path) -> None:
    # Two caches on one folder stand for two executor processes on one host.
    lock = "six==1.17.0\n"  # the version the executor has: it must still land in the venv
    first, second = Environments(tmp_path, 1 << 30), Environments(tmp_path, 1 << 30)
    a, b = await asyncio.gather(first.acquire(lock), second.acquire(lock))

    assert sorted([a.hit, b.hit]) == [False, True]
    assert a.path == b.path and len(folders(tmp_path)) == 1
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(a.path)}))
    assert (site_packages / "six.py").is_file()
    pth = (site_packages / "taskbus_sdk.pth").read_text().splitlines()
    assert str(REPO) in pth
    a.release()
    b.release()


async def test_least_recently_used_environments_go_past_the_cap(tmp_path: Path) -> None:
    cache = Environments(tmp_path, max_bytes=1)  # every environment is over the cap
    held = await cache.acquire("six==1.16.0\n")
    other = await cache.acquire("six==1.17.0\n")  # evicts what is not in use: not `held`
    assert held.path.is_dir()
    other.release()
    held.release()
    third = await cache.acquire("six==1.15.0\n")  # now both earlier ones go

    assert not held.path.exists() and not other.path.exists()
    assert third.path.is_dir()
    third.release()
