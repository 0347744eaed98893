"""Isolated runs (each with its own credential, UID and files): a hostile run, started by a root
executor that holds a secret in its environment, can neither read the executor's secrets nor
another run's arguments, nor change the shared code tree or virtualenv; the other run and the
next run
of the victim's orchestration are unchanged. Real executor, real UIDs, real processes."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import store
from broker.connection import Bus
from broker.models import ExecutorRecord
from broker.status import RunStatus
from executor.daemon import shm_scratch
from executor.uids import can_switch_uids
from tests.helpers import Daemon
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

SECRET = "secret-xyz"
BIG = random.Random(0).randbytes(2 << 20)  # model weights: > 1 MiB, hardlinked, incompressible

VICTIM = """
import hashlib, json, os, time, six
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
print("victim", args["token"], hashlib.sha256(open("big.bin", "rb").read()).hexdigest(),
      hashlib.sha256(open(six.__file__, "rb").read()).hexdigest(), open("main.py").read()[:20])
print("victim ready", flush=True)
deadline = time.time() + 30
while args.get("wait") and time.time() < deadline and not os.path.exists(args["done"]):
    time.sleep(0.02)
"""

ATTACKER = r"""
import json, os, pwd, six, stat, sys, time
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))

def attempt(name, action):
    try:
        action()
    except OSError as exc:
        print(f"RESULT {name}: denied {type(exc).__name__}")
    else:
        print(f"RESULT {name}: done")

def write(path, mode="r+b"):
    def action():
        with open(path, mode) as handle:
            handle.write(b"pwned")
    return action

def read(path):
    def action():
        data = open(path, "rb").read()
        print(f"READ {path}: {data[:200]!r}")
    return action

deadline = time.time() + 30
while not os.path.exists(args["target"]) and time.time() < deadline:
    time.sleep(0.02)
victim_args = open(args["target"]).read().strip()
attempt("victim args", read(victim_args))
attempt("victim private dir", lambda: os.listdir(os.path.dirname(victim_args)))
attempt("executor environ", read(f"/proc/{args['executor_pid']}/environ"))
attempt("executor secret file", read(args["secret_file"]))
attempt("shared big file", write("big.bin"))
attempt("victim tree", write(args["victim_tree"] + "/main.py"))
attempt("venv site-packages", write(six.__file__))
attempt("venv new module", write(os.path.join(os.path.dirname(six.__file__), "evil.py"), "wb"))
attempt("own copy new file", write("scratch.txt", "wb"))
print("SECRET IN ENV", any(args["secret"] in v for v in os.environ.values()),
      sorted(k for k in os.environ if k.startswith("TASKBUS_")))
try:  # a process that changed UID is not dumpable: its own /proc files are root's
    own_environ = open("/proc/self/environ", "rb").read()
    print("SECRET IN PROC ENVIRON", args["secret"].encode() in own_environ)
except PermissionError:
    print("SECRET IN PROC ENVIRON False")
home, tmp = os.environ["HOME"], os.environ["TMPDIR"]
own = [os.stat(p) for p in (home, tmp, os.environ["TASKBUS_ARGS_FILE"])]
print("UID", os.getuid(), [(oct(stat.S_IMODE(s.st_mode)), s.st_uid == os.getuid()) for s in own])
args_dir = os.path.dirname(os.environ["TASKBUS_ARGS_FILE"])
print("PRIVATE", home != tmp and os.path.dirname(home) == args_dir)
open(args["done"], "w").close()
"""


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A world-writable folder for hand-offs with the runs: in the executor's work dir (the
    only part of pytest's 0700 folders runs reach; their /tmp is their own)."""
    path = tmp_path / "executor" / "handoff"
    path.mkdir(parents=True)
    path.parent.chmod(0o755)
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_hostile_run_cannot_reach_secrets_other_runs_or_shared_files(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    shared_dir: Path,
    start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKBUS_PASSWORD", SECRET)  # against a no-auth server: only a secret
    secret_file = shared_dir / "executor.creds"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    work = tmp_path / "executor"
    daemon = start_executor(start_daemon, nats_url, work, "--run-uids", "61000-61183")
    async with asyncio.timeout(30):
        async for _, record in store.watch(bus.executors, ExecutorRecord):
            if record is not None:
                executor_pid = record.pid
                break
    async with asyncio.timeout(10):  # the ready line follows the first heartbeat
        while " ready: " not in daemon.output():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert "runs get their own UID from 61000-61183" in daemon.output()

    requirements = "six==1.16.0\n"
    victim = await upload(
        bus, {"main.py": VICTIM, "big.bin": BIG, "requirements.txt": requirements},
        timeout_s=120,
    )  # fmt: skip
    attacker = await upload(
        bus, {"main.py": ATTACKER, "big.bin": BIG, "requirements.txt": requirements},
        timeout_s=120,
    )  # fmt: skip
    assert victim.lock and victim.lock == attacker.lock  # one shared virtualenv
    done, target = shared_dir / "done", shared_dir / "target"
    victim_task = await run_once(
        bus, victim, name="victim", json_args={"token": "v1", "wait": True, "done": str(done)}
    )
    victim_run = await wait_run(bus, victim_task.id, lambda r: r.status is RunStatus.RUNNING)
    await wait_line(bus, victim_run, "victim ready", timeout_s=60)
    private_root = shm_scratch(victim_run.executor or "")
    [victim_args] = list(private_root.glob("*/args.json"))
    target.write_text(str(victim_args))
    attacker_task = await run_once(
        bus, attacker, name="attacker",
        json_args={
            "target": str(target), "done": str(done), "executor_pid": executor_pid,
            "secret_file": str(secret_file), "secret": SECRET,
            "victim_tree": str(work / "trees" / victim.sha),
        },
    )  # fmt: skip
    attacked = await wait_run(bus, attacker_task.id, timeout_s=60)
    victim_done = await wait_run(bus, victim_task.id, timeout_s=60)
    out = texts(await log_lines(bus, attacked), "stdout")
    print("\n".join(out))
    assert attacked.status is RunStatus.SUCCESS, (
        attacked,
        texts(await log_lines(bus, attacked), "stderr"),
    )
    results = dict(
        line.removeprefix("RESULT ").split(": ", 1) for line in out if line.startswith("RESULT")
    )
    denied = [
        "victim args",
        "victim private dir",
        "executor environ",
        "executor secret file",
        "shared big file",
        "victim tree",
        "venv site-packages",
        "venv new module",
    ]
    for name in denied:
        assert results[name].startswith("denied"), (name, results[name])
    assert results["own copy new file"] == "done"
    assert not any(line.startswith("READ") for line in out)
    assert "SECRET IN ENV False" in "\n".join(out)
    assert "TASKBUS_PASSWORD" not in "\n".join(out)
    assert "SECRET IN PROC ENVIRON False" in out
    uid_line = next(line for line in out if line.startswith("UID"))
    uid = int(uid_line.split()[1])
    assert 61000 <= uid <= 61183
    assert uid_line.endswith("[('0o700', True), ('0o700', True), ('0o600', True)]")
    assert "PRIVATE True" in out

    # The victim's run and the next run of its orchestration are untouched.
    assert victim_done.status is RunStatus.SUCCESS
    first = next(
        t for t in texts(await log_lines(bus, victim_done), "stdout") if t.startswith("victim v1")
    )
    again_task = await run_once(bus, victim, name="again", json_args={"token": "v1"})
    again = await wait_run(bus, again_task.id, timeout_s=60)
    assert again.status is RunStatus.SUCCESS
    second = next(
        t for t in texts(await log_lines(bus, again), "stdout") if t.startswith("victim v1")
    )
    assert first == second
    # Private folders go right after the final status is recorded.
    async with asyncio.timeout(10):
        while list(private_root.glob("*")):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
