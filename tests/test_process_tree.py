"""Kill and timeout end every process a run started, however it detached (issue 10 item 3): a
child, a grandchild, a ``setsid()`` grandchild, a double-forked daemon and a SIGTERM-ignoring
process are all gone within the kill grace + 2 s. Real executor, real processes; the measured
seconds are printed (``-s``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import catalog
from broker.connection import Bus
from broker.status import RunStatus
from tests.helpers import Daemon
from tests.test_executor import (
    process_gone,
    run_once,
    start_executor,
    upload,
    wait_line,
    wait_run,
)

KILL_GRACE_S = 1.0

TREE = r"""
import os, signal, sys, time

def forever(tag, detach=False, ignore_term=False):
    if detach:
        os.setsid()
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(1, f"{tag} {os.getpid()}\n".encode())  # one write: lines of processes never mix
    while True:
        time.sleep(1)

def spawn(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid

spawn(lambda: forever("1child"))
spawn(lambda: (spawn(lambda: forever("2grandchild")), forever("0parent")))
spawn(lambda: (spawn(lambda: forever("3setsid", detach=True)), time.sleep(3600)))
def daemonize():  # the classic double fork: the daemon's parent exits at once
    os.setsid()
    if os.fork() == 0:
        forever("4daemon", ignore_term=True)
    os._exit(0)
spawn(daemonize)
spawn(lambda: forever("5stubborn", ignore_term=True))
os.write(1, b"tree ready\n")
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(3600)
"""
TAGS = ("1child", "2grandchild", "3setsid", "4daemon", "5stubborn")


async def _tree_pids(bus: Bus, run_task_id: str) -> tuple[object, dict[str, int]]:
    run = await wait_run(bus, run_task_id, lambda r: r.pid > 0)
    pids = {}
    for tag in TAGS:
        line = await wait_line(bus, run, f"{tag} ", timeout_s=10)
        pids[tag] = int(line.text.split()[1])
    await wait_line(bus, run, "tree ready")
    return run, pids


async def _gone_after(pids: dict[str, int], since: float, limit_s: float) -> float:
    async with asyncio.timeout(limit_s):
        while not all(process_gone(pid) for pid in pids.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return time.monotonic() - since


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
async def test_kill_and_timeout_end_every_descendant(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    cgroups: bool,
) -> None:
    extra = () if cgroups else ("--no-cgroups",)
    start_executor(
        start_daemon, nats_url, tmp_path / "ex", "--kill-grace", str(KILL_GRACE_S),
        "--run-uids", "61184-61283", *extra,
    )  # fmt: skip
    orch = await upload(bus, {"main.py": TREE})

    killed_task = await run_once(bus, orch, name="killed")
    _, pids = await _tree_pids(bus, killed_task.id)
    started = time.monotonic()
    await catalog.set_task_flags(bus, killed_task.id, killed=True)
    took = await _gone_after(pids, started, KILL_GRACE_S + 2.0)
    run = await wait_run(bus, killed_task.id)
    assert run.status is RunStatus.KILLED
    how = "cgroup" if cgroups else "subreaper + UID sweep"
    print(f"\nkill ({how}): last of {len(pids)} descendants gone {took:.2f} s after the kill")

    timed_task = await run_once(bus, orch, name="timed", timeout=3)
    _, pids = await _tree_pids(bus, timed_task.id)
    timed = await wait_run(bus, timed_task.id, timeout_s=10)
    assert timed.status is RunStatus.TIMED_OUT
    async with asyncio.timeout(2.0):  # within 2 s of the run being recorded timed out
        while not all(process_gone(pid) for pid in pids.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_a_dead_executors_cgroups_are_removed_by_the_next_one(tmp_path: Path) -> None:
    """An executor killed with SIGKILL leaves its cgroup parents (and a run's, emptied);
    the next executor on the host removes them, and leaves a live executor's alone."""
    from executor.cgroups import CONTROLLERS, ROOT, Cgroups

    probe, _ = Cgroups.probe("probe")
    if probe is None:
        pytest.skip("no writable cgroup v1 hierarchy here")
    probe.close()
    finished = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)  # a pid that was an executor's and is gone
    dead, live = f"host-{dead_pid}-abcd", f"host-{os.getpid()}-abcd"
    for owner in (dead, live):
        for controller in CONTROLLERS:
            (ROOT / controller / "taskbus" / owner / "run-1").mkdir(parents=True)
    mine, _ = Cgroups.probe(f"host-{os.getpid()}-ef01")
    assert mine is not None
    try:
        for controller in CONTROLLERS:
            assert not (ROOT / controller / "taskbus" / dead).exists()
            assert (ROOT / controller / "taskbus" / live / "run-1").is_dir()
    finally:
        mine.close()
        for controller in CONTROLLERS:
            for owner in (f"{live}/run-1", live):
                with contextlib.suppress(OSError):
                    (ROOT / controller / "taskbus" / owner).rmdir()
