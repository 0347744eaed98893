"""What one run can leave for the next (a security review's findings): planted code in a
reused working copy, a fork bomb, files in shared temp dirs under a reused UID. Real executor,
real UIDs, real processes."""

from __future__ import annotations

import ast
import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import catalog, names
from broker.connection import Bus
from broker.status import RunStatus
from executor.daemon import shm_scratch
from executor.settings import ExecutorSettings
from executor.uids import can_switch_uids, processes_of, remove_files_of
from tests.helpers import REPO, Daemon
from tests.test_executor import (
    log_lines,
    run_once,
    start_executor,
    texts,
    upload,
    wait_line,
    wait_run,
)

pytestmark = pytest.mark.skipif(not can_switch_uids(), reason="needs root or CAP_SETUID")

PLANTER = r"""
import json, os
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
print("CWD", os.getcwd())
try:
    import extras
except ImportError:
    extras = None
print("VICTIM", args["token"], "extras" if extras else "-")
if args.get("attack"):
    def attempt(name, action):
        try:
            action()
        except OSError as exc:
            print(f"RESULT {name}: denied {type(exc).__name__}")
        else:
            print(f"RESULT {name}: done")
    here = os.getcwd()
    folder = os.stat(here)
    source = open("main.py", "rb").read()
    planted = source.replace(b'"VIC' + b'TIM"', b'"PWNED!"')  # same length
    assert len(planted) == len(source) and planted != source
    def in_place():
        st = os.stat("main.py")
        with open("main.py", "r+b") as handle:
            handle.write(planted)
        os.utime("main.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    def replace():
        st = os.stat("main.py")
        with open("main.new", "wb") as handle:
            handle.write(planted)
        os.utime("main.new", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename("main.new", "main.py")
    def new_module():
        with open("extras.py", "w") as handle:
            handle.write("import os; print('PWNED!', open(os.environ['TASKBUS_ARGS_FILE']).read())")
    attempt("write main.py in place", in_place)
    attempt("replace main.py", replace)
    attempt("plant a module", new_module)
    if os.path.exists("main.new"):
        os.unlink("main.new")
    times = (folder.st_atime_ns, folder.st_mtime_ns)
    attempt("reset the folder's times", lambda: os.utime(here, ns=times))
"""


async def _idle(scratch: Path) -> None:
    """Until the executor has cleaned up after its last run (its private folder goes just
    before the working copy is judged, in one step of the event loop)."""
    assert scratch.is_dir(), scratch  # noqa: ASYNC240
    async with asyncio.timeout(10):
        while list(scratch.glob("*")):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.01)


async def _out(bus: Bus, task_id: str) -> list[str]:
    run = await wait_run(bus, task_id, timeout_s=60)
    lines = await log_lines(bus, run)
    assert run.status is RunStatus.SUCCESS, (run, texts(lines, "stderr"))
    return texts(lines, "stdout")


async def test_a_run_cannot_plant_code_in_the_next_run_of_its_zip(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_executor(start_daemon, nats_url, tmp_path / "ex", "--run-uids", "61284-61383")
    orch = await upload(bus, {"main.py": PLANTER, "pkg/__init__.py": "", "pkg/mod.py": "X = 1\n"})
    first = await run_once(bus, orch, name="c1", json_args={"token": "c1"})
    out = await _out(bus, first.id)
    scratch = shm_scratch((await wait_run(bus, first.id)).executor or "")
    assert "runs get their own UID" in daemon.output()
    cwd = next(line for line in out if line.startswith("CWD"))
    await _idle(scratch)
    again = await _out(bus, (await run_once(bus, orch, name="c2", json_args={"token": "c2"})).id)
    assert cwd in again, "an untouched working copy is reused"  # spares still work
    await _idle(scratch)

    attack = await run_once(bus, orch, name="attacker", json_args={"token": "a", "attack": True})
    out = await _out(bus, attack.id)
    print("\n".join(out))
    assert cwd in out
    results = dict(line.removeprefix("RESULT ").split(": ", 1) for line in out if "RESULT" in line)
    for name in ("write main.py in place", "replace main.py", "reset the folder's times"):
        assert results[name].startswith("denied"), (name, results)
    assert results["plant a module"] == "done"  # the run may add files to its folder...
    await _idle(scratch)

    # ... but the next run of the zip (another task) never runs anything the attacker wrote.
    victim = await run_once(bus, orch, name="victim", json_args={"token": "secret-v2"})
    out = await _out(bus, victim.id)
    assert "VICTIM secret-v2 -" in out, out
    assert not any("PWNED" in line for line in out), out
    assert cwd not in out  # the attacker's working copy was not kept
    main = (tmp_path / "ex" / "trees" / orch.sha / "main.py").read_text()
    assert main == PLANTER


FORKER = r"""
import os, sys, time
read, write = os.pipe()
born = 0
for _ in range(200):  # bounded: without a limit this stops at 200 processes, harmlessly
    try:
        pid = os.fork()
    except OSError as exc:
        print("LIMIT", born, type(exc).__name__, flush=True)
        break
    if pid == 0:
        os.close(write)
        os.read(read, 1)  # blocks until killed
        os._exit(0)
    born += 1
else:
    print("NO LIMIT", born, flush=True)
print("UID", os.getuid(), flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
async def test_a_fork_bomb_stays_inside_its_run(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon], cgroups: bool
) -> None:
    extra = () if cgroups else ("--no-cgroups",)
    start_executor(
        start_daemon, nats_url, tmp_path / "ex", "--run-uids", "61384-61483",
        "--max-run-pids", "40", "--kill-grace", "0.5", *extra,
    )  # fmt: skip
    orch = await upload(bus, {"main.py": FORKER})
    task = await run_once(bus, orch, name="bomb")
    run = await wait_run(bus, task.id, lambda r: r.status is RunStatus.RUNNING)
    uid = int((await wait_line(bus, run, "UID ")).text.split()[1])
    lines = [line.text for line in await log_lines(bus, run)]
    limit = next(line for line in lines if "LIMIT" in line)
    assert limit.startswith("LIMIT "), limit
    assert int(limit.split()[1]) < 40  # the run's own process counts too
    assert len(processes_of(uid)) <= 40
    await catalog.set_task_flags(bus, task.id, killed=True)
    assert (await wait_run(bus, task.id)).status is RunStatus.KILLED
    async with asyncio.timeout(5):
        while processes_of(uid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


TEMPS = r"""
import json, os
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
paths = [f"{folder}/{args['name']}" for folder in ("/tmp", "/var/tmp", "/dev/shm")]
print("UID", os.getuid())
if args["write"]:
    for path in paths:
        with open(path, "w") as handle:
            handle.write("left for the next run")
    print("WROTE", sorted(os.listdir("/tmp")), flush=True)
print("SEEN", [p for p in paths if os.path.exists(p)])
"""


async def test_temp_files_of_a_run_do_not_reach_the_next_run_with_its_uid(
    bus: Bus, nats_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    start_executor(start_daemon, nats_url, tmp_path / "ex", "--run-uids", "61182-61182")
    orch = await upload(bus, {"main.py": TEMPS})
    name = f"taskbus-left-{uuid.uuid4().hex}"
    host_only = Path("/tmp") / f"taskbus-host-{uuid.uuid4().hex}"
    host_only.write_text("the host's, not the run's")
    try:
        written = await _out(
            bus, (await run_once(bus, orch, json_args={"name": name, "write": True})).id
        )
    finally:
        host_only.unlink()
    assert f"SEEN ['/tmp/{name}', '/var/tmp/{name}', '/dev/shm/{name}']" in written
    # A /tmp of its own: nobody else's files, only the ways to what the run needs that lie
    # under /tmp on this host (pytest's work dir; a checkout or virtualenv placed there).
    listed = ast.literal_eval(next(line for line in written if line.startswith("WROTE "))[6:])
    needed = {REPO, Path(sys.prefix), Path(sys.base_prefix), tmp_path}
    on_the_way = {p.resolve().parts[2] for p in needed if p.resolve().parts[1:2] == ("tmp",)}
    assert name in listed and host_only.name not in listed, listed
    assert set(listed) - {name} <= on_the_way, (listed, on_the_way)
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not os.path.exists(f"{folder}/{name}")  # noqa: ASYNC240 (never in the host's)
    later = await _out(
        bus, (await run_once(bus, orch, json_args={"name": name, "write": False})).id
    )
    assert "UID 61182" in written and "UID 61182" in later
    assert "SEEN []" in later


def test_a_released_uid_s_temp_files_are_swept(tmp_path: Path) -> None:
    """Where the host refuses a run's own temp dirs: what its UID left at their top goes."""
    shared = tmp_path / "shared"
    shared.mkdir()
    theirs, mine, other = shared / "theirs", shared / "dir", shared / "other"
    theirs.write_text("x")
    mine.mkdir()
    (mine / "inner").write_text("x")
    other.write_text("x")
    for path in (theirs, mine, mine / "inner"):
        os.lchown(path, 61999, 61999)
    assert remove_files_of(61999, [str(shared), str(tmp_path / "missing")], 100) == 2
    assert sorted(p.name for p in shared.iterdir()) == ["other"]


def test_the_process_limit_is_a_setting_with_a_default() -> None:
    assert ExecutorSettings.from_cli([]).max_run_pids == names.DEFAULT_MAX_RUN_PIDS == 1024
    assert ExecutorSettings.from_cli(["--max-run-pids", "64"]).max_run_pids == 64
    with pytest.raises(SystemExit) as refused:
        ExecutorSettings.from_cli(["--max-run-pids", "0"])
    assert refused.value.code == 2
