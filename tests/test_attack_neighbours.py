"""Attacks on a run's neighbours (SECURITY.md 2, 3, 7), beyond tests/test_attack.py: a victim
and a hostile run side by side on one executor, as root switching UIDs (cgroups v1), on an
operator-mode server with the scheduler. The hostile run, using only what it finds on its
machine, probes the victim's private files and processes, the executor's process, fds and
on-disk authority, the cgroup tree and the bus's system surface, and leaks its own credential
(base64, which the log mask does not catch). Each test checks one outcome of that scenario.

One known gap is pinned as a strict xfail (README, "Security model"): a killed run's
credential lapses at the run's deadline, not at its end. A fix flips its test. The last test
is the same attack where runs share the executor's UID (`--run-uids none`), each in user and
mount namespaces of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import catalog, connections, names, store, tokens, workspaces
from broker.authority import Authority
from broker.connection import connect
from broker.errors import NotConnected, PermissionDenied
from broker.models import ExecutorRecord, TaskRecord
from broker.secret_key import SecretKey, new_key_text
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings
from broker.status import RunStatus
from executor.daemon import shm_scratch
from executor.uids import can_switch_uids
from tests.conftest import as_role
from tests.helpers import Daemon, wait_for_executors
from tests.test_attack import PROBES, results_of
from tests.test_executor import log_lines, run_once, texts, upload, wait_line, wait_run

pytestmark = pytest.mark.skipif(not can_switch_uids(), reason="needs root or CAP_SETUID")

EXECUTOR_SECRET = "executor-only-secret-4711"

VICTIM = r"""
import json, os, subprocess, sys, time
args = json.load(open(os.environ["TASKBUS_ARGS_FILE"]))
for folder in (os.environ["HOME"], os.environ["TMPDIR"]):
    with open(os.path.join(folder, "victim-note.txt"), "w") as handle:
        handle.write("victim-private-note-9931")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
info = {
    "pid": os.getpid(), "child": child.pid, "uid": os.getuid(),
    "home": os.environ["HOME"], "tmp": os.environ["TMPDIR"],
    "args_file": os.environ["TASKBUS_ARGS_FILE"],
    "creds": os.environ.get("TASKBUS_CREDS", ""),
    "connections": os.environ.get("TASKBUS_CONNECTIONS_FILE", ""),
    "cwd": os.getcwd(),
}
print("VICTIM " + json.dumps(info), flush=True)
deadline = time.time() + 90
while time.time() < deadline and not os.path.exists(args["done"]):
    time.sleep(0.05)
child.kill()
print("victim alive", open(os.path.join(os.environ["HOME"], "victim-note.txt")).read(), flush=True)
"""

HOSTILE = (
    r"""
import asyncio, base64, ctypes, ctypes.util, json, os, signal, sys, time
import sdk

args = sdk.task_args()
deadline = time.time() + 60
while not os.path.exists(args["target"]) and time.time() < deadline:
    time.sleep(0.05)
t = json.load(open(args["target"]))
v = t["victim"]

"""
    + PROBES
    + r"""
def read(path, n=120):
    return lambda: open(path, "rb").read()[:n]

# --- another run's private files (by their exact paths) --------------------------------------
attempt("victim run creds", read(v["creds"]))
attempt("victim connections file", read(v["connections"]))
attempt("victim home note", read(v["home"] + "/victim-note.txt"))
attempt("victim tmpdir note", read(v["tmp"] + "/victim-note.txt"))
def others_in_scratch():
    own = os.path.basename(os.path.dirname(os.environ["TASKBUS_ARGS_FILE"]))
    seen = [e for e in os.listdir(os.path.dirname(os.path.dirname(v["args_file"]))) if e != own]
    if not seen:
        raise PermissionError("only its own folder is visible")
    return seen
attempt("list scratch", others_in_scratch)

# --- another run's processes ------------------------------------------------------------------
for label, pid in (("victim", v["pid"]), ("victim child", v["child"])):
    attempt(f"{label} /proc environ", read(f"/proc/{pid}/environ"))
    attempt(f"{label} /proc cwd", lambda pid=pid: os.listdir(f"/proc/{pid}/cwd"))
    attempt(f"{label} /proc fds", lambda pid=pid: os.listdir(f"/proc/{pid}/fd"))
    attempt(f"{label} /proc mem", lambda pid=pid: open(f"/proc/{pid}/mem", "rb").read(1))
    attempt(f"{label} /proc root", lambda pid=pid: os.listdir(f"/proc/{pid}/root/"))
    attempt(f"signal {label}", lambda pid=pid: os.kill(pid, 0))

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def ptrace(pid):
    def action():
        if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        time.sleep(0.05)
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
        return "attached"
    return action

attempt("ptrace victim", ptrace(v["pid"]))

# --- the executor, its zygote, the scheduler, the server --------------------------------------
for label, pid in t["daemons"].items():
    attempt(f"signal {label}", lambda pid=pid: os.kill(pid, 0))
    attempt(f"ptrace {label}", ptrace(pid))
    attempt(f"{label} /proc environ", read(f"/proc/{pid}/environ"))
    attempt(f"{label} /proc fds", lambda pid=pid: os.listdir(f"/proc/{pid}/fd"))
    attempt(f"{label} /proc root", lambda pid=pid: os.listdir(f"/proc/{pid}/root/"))
    def cmdline(pid=pid):
        text = open(f"/proc/{pid}/cmdline", "rb").read()
        if args["executor_secret"].encode() in text:
            return "SECRET " + text.decode(errors="replace")
        raise PermissionError("readable, but no secret in it")
    attempt(f"{label} cmdline secret", cmdline)

# --- on-disk material of the executor and the authority --------------------------------------
for label, path in t["files"].items():
    attempt(f"read {label}", read(path))
for label, path in t["dirs"].items():
    attempt(f"list {label}", lambda path=path: os.listdir(path))
attempt("read victim's cached code", read(t["victim_tree_main"]))

# --- own fds: nothing inherited from the executor or zygote -----------------------------------
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
odd = {fd: link for fd, link in fds.items()
       if int(fd) > 2 and "/proc/" not in link and not link.startswith(("pipe:", "anon_inode:"))}
report("inherited fds", bool(odd), odd)

# --- the cgroup tree: out of its own cgroup, or freezing the victim ---------------------------
own = {}
for line in open("/proc/self/cgroup"):
    _, controllers, path = line.strip().split(":", 2)
    for c in controllers.split(","):
        own[c] = path
def write(path, text):
    def action():
        with open(path, "w") as handle:
            handle.write(text)
    return action
for c in ("memory", "pids", "freezer", "cpu"):
    if c in own and own[c] != "/":
        base = f"/sys/fs/cgroup/{c}"
        if not os.path.isdir(base):
            mounts = os.listdir("/sys/fs/cgroup")
            base = "/sys/fs/cgroup/" + next(d for d in mounts if c in d.split(","))
        attempt(f"escape {c} cgroup", write(f"{base}/cgroup.procs", str(os.getpid())))
        limit = {"memory": "memory.limit_in_bytes", "pids": "pids.max",
                 "freezer": "freezer.state", "cpu": "cpu.cfs_quota_us"}[c]
        value = {"freezer": "THAWED", "pids": "max", "memory": "-1", "cpu": "-1"}[c]
        attempt(f"raise own {c} limit", write(f"{base}{own[c]}/{limit}", value))
for path in t["victim_cgroups"]:
    attempt("freeze victim cgroup " + path.split("/")[3], write(path, "FROZEN"))

# --- the bus: system account, another workspace's connection ----------------------------------
import nats
async def raw():
    errors = []
    async def error_cb(exc):
        errors.append(str(exc))
    async def probe(name, coro, timeout=1.0):
        before = len(errors)
        try:
            value = await asyncio.wait_for(coro, timeout)
        except Exception as exc:
            report(name, False, f"{type(exc).__name__} {errors[before:]}")
        else:
            report(name, not errors[before:], repr(value)[:100] + str(errors[before:]))
    nc = await nats.connect(os.environ["TASKBUS_URL"], user_credentials=os.environ["TASKBUS_CREDS"],
                            error_cb=error_cb, max_reconnect_attempts=0)
    await probe("raw $SYS account connz", nc.request("$SYS.REQ.ACCOUNT.PING.CONNZ", b"{}"))
    await probe("raw $SYS server varz", nc.request("$SYS.REQ.SERVER.PING.VARZ", b"{}"))
    await probe("raw account info", nc.request("$JS.API.INFO", b""))
    await nc.close()
    try:
        anon = await nats.connect(os.environ["TASKBUS_URL"], max_reconnect_attempts=0,
                                  allow_reconnect=False, connect_timeout=2)
    except Exception as exc:
        report("anonymous connect", False, type(exc).__name__)
    else:
        report("anonymous connect", True)
        await anon.close()
asyncio.run(raw())

def other_connection():
    return sdk.Client().get_connection("db-b").details()
attempt("sdk connection of workspace team-b", other_connection)
try:
    other_connection()
except sdk.PermissionDenied as exc:
    print("CONNECTION ERROR PermissionDenied", str(exc)[:200], flush=True)
except Exception as exc:
    print("CONNECTION ERROR", type(exc).__name__, str(exc)[:200], flush=True)

# --- keep the credential (base64: past the log mask), then stay until killed ----------------
creds = open(os.environ["TASKBUS_CREDS"]).read()
print("EXFIL " + base64.b64encode(creds.encode()).decode(), flush=True)
open(args["done"], "w").close()
print("HOSTILE DONE", flush=True)
time.sleep(600)
"""
)


@pytest.fixture(scope="module")
def audit() -> Iterator[dict[str, Any]]:
    # Not under /tmp: a run's /tmp is its own tmpfs, which would hide the authority's files
    # whatever their modes. Here only the 0600 modes and the run's UID keep them out.
    Path("/var/lib").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="taskbus-audit-", dir="/var/lib"))
    root.chmod(0o755)
    saved = dict(os.environ)
    try:
        yield asyncio.run(_scenario(root))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


async def _scenario(root: Path) -> dict[str, Any]:
    authority = Authority(root / "auth").ensure_local()
    settings = ServerSettings(data_dir=root / "nats", port=0, config_file=authority.server_config)
    daemons: list[Daemon] = []
    with EmbeddedServer(settings) as server:
        admin = await connect(as_role(server.url, authority, "admin"))
        key_text = new_key_text()
        os.environ["TASKBUS_PASSWORD"] = EXECUTOR_SECRET
        os.environ[names.ENV_SECRET_KEY] = key_text
        work = root / "executor"
        handoff = work / "handoff"
        handoff.mkdir(parents=True)
        work.chmod(0o755)
        handoff.chmod(0o777)
        try:
            daemons.append(Daemon(
                ["-m", "executor", "--url", server.url, "--creds",
                 str(authority.creds_path("executor")), "--run-signing-key",
                 str(authority.run_signing_key), "--run-uids", "61600-61699",
                 "--work-dir", str(work), "--slots", "4", "--kill-grace", "0.5"],
                root / "executor.log",
            ))  # fmt: skip
            daemons.append(Daemon(
                ["-m", "broker.scheduler", "--url", server.url, "--creds",
                 str(authority.creds_path("scheduler"))], root / "scheduler.log",
            ))  # fmt: skip
            for var in ("TASKBUS_PASSWORD", names.ENV_SECRET_KEY):
                os.environ.pop(var)
            await wait_for_executors(admin, 1)
            [heartbeat] = list((await store.scan(admin, names.EXECUTORS, ExecutorRecord)).values())
            await workspaces.create(admin.workspaces, "team-b")
            key = SecretKey.from_text(key_text, "test")
            await connections.create(
                admin, key, name="db-b", connection_type="postgres",
                details={"password": "team-b-db-s3cret"}, workspace="team-b",
            )  # fmt: skip
            user = await connect(as_role(server.url, authority, "user"))
            try:
                return await _attack(
                    server, authority, admin, user, heartbeat, work, handoff, daemons, root
                )
            finally:
                await user.close()
        finally:
            await admin.close()
            for daemon in daemons:
                daemon.stop()


async def _attack(server, authority, admin, user, heartbeat, work, handoff, daemons, root):
    result: dict[str, Any] = {"server_url": server.url, "authority": authority, "root": root}
    victim_orch = await upload(user, {"main.py": VICTIM})
    done = handoff / "done"
    victim = await run_once(user, victim_orch, name="victim", json_args={"done": str(done)})
    victim_run = await wait_run(user, victim.id, lambda r: r.status is RunStatus.RUNNING)
    line = await wait_line(user, victim_run, "VICTIM ", timeout_s=60)
    info = json.loads(line.text.removeprefix("VICTIM "))
    result["victim_info"] = info
    zygotes = _children(heartbeat.pid)
    victim_cgroups = []
    for row in Path(f"/proc/{info['pid']}/cgroup").read_text().splitlines():  # noqa: ASYNC240
        _, controllers, path = row.split(":", 2)
        if "freezer" in controllers.split(",") and path != "/":
            victim_cgroups.append(f"/sys/fs/cgroup/freezer{path}/freezer.state")
    target = {
        "victim": info,
        "daemons": {
            "executor": heartbeat.pid,
            **{f"executor child {i}": pid for i, pid in enumerate(zygotes)},
            "scheduler": daemons[1].process.pid,
            "nats-server": server.process.pid,
        },
        "files": {
            "executor creds": str(authority.creds_path("executor")),
            "run signing key": str(authority.run_signing_key),
            "secret key file": str(authority.secret_key),
            "account key": str(authority.root / "account.nk"),
        },
        "dirs": {"work dir": str(work), "trees": str(work / "trees")},
        "victim_tree_main": str(work / "trees" / victim_orch.sha / "main.py"),
        "victim_cgroups": victim_cgroups,
    }
    (handoff / "target.json").write_text(json.dumps(target))
    hostile_orch = await upload(user, {"main.py": HOSTILE})
    hostile = await run_once(
        user, hostile_orch, name="hostile",
        json_args={"target": str(handoff / "target.json"), "done": str(done),
                   "executor_secret": EXECUTOR_SECRET},
    )  # fmt: skip
    hostile_run = await wait_run(user, hostile.id, lambda r: r.status is RunStatus.RUNNING)
    await wait_line(user, hostile_run, "HOSTILE DONE", timeout_s=90)
    lines = await log_lines(user, hostile_run)
    out, err = texts(lines, "stdout"), texts(lines, "stderr")
    result["out"], result["err"] = out, err
    result["results"] = results_of(out)
    creds = base64.b64decode(next(r for r in out if r.startswith("EXFIL "))[6:]).decode()
    result["creds"] = creds
    # The hostile run is killed; its credential is tried from outside afterwards.
    await catalog.set_task_flags(user, hostile.id, killed=True)
    killed = await wait_run(user, hostile.id, timeout_s=30)
    result["hostile_status"] = killed.status
    result["hostile_task_key"] = hostile.key
    creds_file = root / "exfil.creds"
    creds_file.write_text(creds)
    creds_file.chmod(0o600)
    try:
        stolen = await connect(ConnectSettings(urls=[server.url], creds_file=str(creds_file)))
    except NotConnected as exc:
        result["after_kill"] = f"refused: {exc}"
    else:
        try:
            found = await store.get(stolen.tasks, hostile.key, TaskRecord)
            result["after_kill"] = f"usable: read own task {found is not None}"
        except PermissionDenied as exc:
            result["after_kill"] = f"refused: {exc}"
        finally:
            await stolen.close()
    victim_done = await wait_run(user, victim.id, timeout_s=60)
    result["victim_status"] = victim_done.status
    result["victim_out"] = texts(await log_lines(user, victim_done), "stdout")
    return result


def _denied(audit: dict[str, Any], *names_: str) -> None:
    results = audit["results"]
    for name in names_:
        assert name in results, (name, sorted(results), audit["err"])
        assert results[name].startswith("denied"), (name, results[name])


# --- what holds --------------------------------------------------------------------------------


def test_the_hostile_run_ran_every_probe(audit: dict[str, Any]) -> None:
    assert "HOSTILE DONE" in audit["out"], audit["err"]
    assert audit["hostile_status"] is RunStatus.KILLED
    assert audit["victim_status"] is RunStatus.SUCCESS
    assert "victim alive victim-private-note-9931" in audit["victim_out"]


def test_another_runs_credential_connections_home_and_tmpdir_are_out_of_reach(
    audit: dict[str, Any],
) -> None:
    """SECURITY.md 3: cannot read another run's argument file or credential; own HOME/TMPDIR."""
    _denied(audit, "victim run creds", "victim connections file", "victim home note",
            "victim tmpdir note", "list scratch")  # fmt: skip
    assert not any("victim-private-note" in line for line in audit["out"])


def test_another_runs_processes_cannot_be_inspected_signalled_or_traced(
    audit: dict[str, Any],
) -> None:
    for label in ("victim", "victim child"):
        _denied(audit, f"{label} /proc environ", f"{label} /proc cwd", f"{label} /proc fds",
                f"{label} /proc mem", f"{label} /proc root", f"signal {label}")  # fmt: skip
    _denied(audit, "ptrace victim")


def test_the_executor_its_zygote_scheduler_and_server_cannot_be_signalled_or_read(
    audit: dict[str, Any],
) -> None:
    labels = [k.split(" /proc environ")[0] for k in audit["results"] if k.endswith("/proc environ")]
    daemons = [label for label in labels if not label.startswith("victim")]
    assert {"executor", "scheduler", "nats-server"} <= set(daemons), daemons
    for label in daemons:
        _denied(audit, f"signal {label}", f"ptrace {label}", f"{label} /proc environ",
                f"{label} /proc fds", f"{label} /proc root", f"{label} cmdline secret")  # fmt: skip


def test_executor_credentials_keys_and_work_dir_on_disk_are_out_of_reach(
    audit: dict[str, Any],
) -> None:
    _denied(audit, "read executor creds", "read run signing key", "read secret key file",
            "read account key", "list trees")  # fmt: skip


def test_a_run_inherits_no_file_descriptor_of_the_executor(audit: dict[str, Any]) -> None:
    _denied(audit, "inherited fds")


def test_a_run_cannot_leave_its_cgroups_raise_its_limits_or_freeze_another_run(
    audit: dict[str, Any],
) -> None:
    results = audit["results"]
    cgroup = [name for name in results if "cgroup" in name or name.startswith("raise own")]
    assert any(name.startswith("escape") for name in cgroup), (cgroup, audit["err"])
    assert any(name.startswith("freeze victim") for name in cgroup), cgroup
    _denied(audit, *cgroup)


def test_the_system_account_and_anonymous_connections_are_refused(audit: dict[str, Any]) -> None:
    _denied(audit, "raw $SYS account connz", "raw $SYS server varz", "raw account info",
            "anonymous connect")  # fmt: skip


def test_a_run_of_one_workspace_gets_permission_denied_on_anothers_connection(
    audit: dict[str, Any],
) -> None:
    """Issue 9, Tests: a run of workspace A failing with PermissionDenied on a connection of
    workspace B (and never its details)."""
    _denied(audit, "sdk connection of workspace team-b")
    assert any(r.startswith("CONNECTION ERROR PermissionDenied") for r in audit["out"]), [
        r for r in audit["out"] if r.startswith("CONNECTION ERROR")
    ]
    assert not any("team-b-db-s3cret" in line for line in audit["out"] + audit["err"])


def test_the_run_credential_expires_no_later_than_documented(audit: dict[str, Any]) -> None:
    """README: a run without a timeout gets a credential of 7 days at most."""
    parsed = tokens.parse_creds(audit["creds"])
    assert parsed.expires_at is not None
    assert parsed.expires_at - time.time() <= names.RUN_CREDENTIAL_MAX_S + 60
    assert "role:run" in parsed.tags


def test_trees_of_other_orchestrations_are_not_readable_by_path(audit: dict[str, Any]) -> None:
    """The executor's tree cache: neither listable nor readable by a run UID (a run reads
    only its own working copy)."""
    _denied(audit, "read victim's cached code", "list trees")


# --- known gaps (strict xfails) ---------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="known gap: run credentials are not revoked; they lapse at the run's deadline",
)
def test_a_killed_runs_credential_stops_working(audit: dict[str, Any]) -> None:
    """SECURITY.md 2: "a credential valid only for its run". A run without a timeout gets 7
    days; nothing revokes it when the run is killed or ends, so a copy (base64: the log mask
    catches only the verbatim JWT/seed) keeps reading the task (its json_args) from anywhere."""
    assert audit["after_kill"].startswith("refused"), audit["after_kill"]


# --- no UID to switch to: runs share the executor's UID, each in namespaces of its own ------

SHARED_VICTIM = r"""
import json, os, time
private = os.path.dirname(os.environ["TASKBUS_ARGS_FILE"])
with open(os.path.join(os.environ["HOME"], "note.txt"), "w") as handle:
    handle.write("victim-home-note-2207")
print("VICTIM " + json.dumps({"pid": os.getpid(), "private": private,
                              "copy": os.getcwd()}), flush=True)
deadline = time.time() + 120
while time.time() < deadline:
    time.sleep(0.05)
"""

SHARED_ATTACKER = (
    r"""
import glob, json, os, sdk
args = sdk.task_args()
mine = os.path.dirname(os.environ["TASKBUS_ARGS_FILE"])
scratch = os.path.dirname(mine)

"""
    + PROBES
    + r"""
def read(path):
    with open(path, "rb") as handle:
        return handle.read(200)

def write(path):
    with open(path, "w") as handle:
        handle.write("planted")
    return path

def others():
    found = [p for p in glob.glob(scratch + "/*") if p != mine]
    if found:
        return found
    raise PermissionError("no other run's folder in sight")

victim = args["victim"]
attempt("list other private dirs", others)
attempt("victim args", lambda: read(victim["private"] + "/args.json"))
attempt("victim credential", lambda: read(victim["private"] + "/run.creds"))
attempt("victim home note", lambda: read(victim["private"] + "/home/note.txt"))
attempt("victim code", lambda: write(victim["copy"] + "/main.py"))
attempt("victim /proc environ", lambda: read(f"/proc/{victim['pid']}/environ"))
attempt("victim /proc root",
        lambda: read(f"/proc/{victim['pid']}/root{victim['private']}/args.json"))
attempt("executor /proc environ", lambda: read(f"/proc/{args['executor_pid']}/environ"))
attempt("executor /proc root", lambda: os.listdir(f"/proc/{args['executor_pid']}/root/"))
attempt("executor credential", lambda: read(args["executor_creds"]))
attempt("run signing key", lambda: read(args["signing_key"]))
attempt("connections key", lambda: read(args["secret_key"]))
attempt("work dir", lambda: os.listdir(args["work_dir"] + "/trees"))
attempt("environments", lambda: write(args["env_dir"] + "/planted.txt"))
attempt("unmount the cover", lambda: [os.system(f"umount -l {scratch} 2>/dev/null"),
                                    read(victim["private"] + "/args.json")])
attempt("another executor's run", lambda: read(args["other_executor_args"]))
attempt("write the SDK", lambda: write(sdk.__file__))
attempt("write outside the temp dirs", lambda: write(args["outside"]))
print("ATTACKER DONE", flush=True)
"""
)


@pytest.mark.timeout(180)
async def test_without_run_uids_a_run_still_cannot_read_another_runs_files() -> None:
    """SECURITY.md 3 where the executor may not switch UIDs (`--run-uids none`, or not root):
    each run gets user and mount namespaces of its own, so a run of the executor's own UID
    still cannot read another run's private directory (arguments, credential, HOME) nor
    write its code, read the executor's /proc or its credential and key files (kept outside
    the temp dirs here, as on a real host), list the work dir or write the environments; and
    it cannot undo that (its mounts are locked, it holds no capability)."""
    os.makedirs("/var/lib", exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="taskbus-shared-", dir="/var/lib"))
    try:
        await _shared_uid_attack(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _shared_uid_attack(root: Path) -> None:
    authority = Authority(root / "auth").ensure_local()
    settings = ServerSettings(data_dir=root / "nats", port=0, config_file=authority.server_config)
    os.environ[names.ENV_SECRET_KEY] = new_key_text()  # only for the executor to inherit
    with EmbeddedServer(settings) as server:
        admin = await connect(as_role(server.url, authority, "admin"))
        work = root / "executor"
        executor = Daemon(
            ["-m", "executor", "--url", server.url, "--creds",
             str(authority.creds_path("executor")), "--run-signing-key",
             str(authority.run_signing_key), "--run-uids", "none", "--work-dir", str(work)],
            root / "executor.log",
        )  # fmt: skip
        os.environ.pop(names.ENV_SECRET_KEY)
        scheduler = Daemon(
            ["-m", "broker.scheduler", "--url", server.url, "--creds",
             str(authority.creds_path("scheduler"))], root / "scheduler.log",
        )  # fmt: skip
        user = await connect(as_role(server.url, authority, "user"))
        try:
            await wait_for_executors(admin, 1)
            [heartbeat] = list((await store.scan(admin, names.EXECUTORS, ExecutorRecord)).values())
            victim = await run_once(user, await upload(user, {"main.py": SHARED_VICTIM}))
            v_run = await wait_run(user, victim.id, lambda r: r.status is RunStatus.RUNNING)
            info = json.loads((await wait_line(user, v_run, "VICTIM ")).text[len("VICTIM ") :])
            key_file = root / "auth" / names.SECRET_KEY_FILE  # where `taskbus up` keeps it
            other = shm_scratch(f"other-{root.name}") / "run"  # another executor's run
            other.mkdir(parents=True)
            (other / "args.json").write_text('{"token": "other-executor-args"}')
            args = {
                "victim": info, "executor_pid": heartbeat.pid,
                "executor_creds": str(authority.creds_path("executor")),
                "signing_key": str(authority.run_signing_key), "secret_key": str(key_file),
                "work_dir": str(work), "env_dir": str(work / "envs"),
                "other_executor_args": str(other / "args.json"), "outside": str(root / "x"),
            }  # fmt: skip
            attacker = await run_once(
                user, await upload(user, {"main.py": SHARED_ATTACKER}), json_args=args
            )
            a_run = await wait_run(user, attacker.id, timeout_s=90)
            out = texts(await log_lines(user, a_run), "stdout")
            assert "ATTACKER DONE" in out, (a_run.reason, out)
            results = results_of(out)
            assert len(results) == 18, results
            done = {n: got for n, got in results.items() if not got.startswith("denied")}
            assert not done, done
            assert (Path(info["copy"]) / "main.py").read_text() == SHARED_VICTIM
            assert not (work / "envs" / "planted.txt").exists() and not (root / "x").exists()
            shutil.rmtree(other.parent, ignore_errors=True)
            log = (root / "executor.log").read_text()
            assert "each in user and mount namespaces of its own" in log
            await catalog.set_task_flags(user, victim.id, killed=True)
            assert (await wait_run(user, victim.id, timeout_s=30)).status is RunStatus.KILLED
        finally:
            await user.close()
            await admin.close()
            scheduler.stop()
            executor.stop()
