"""The attack a run must not get away with, as a test: an uploaded orchestration whose main.py
uses only what it finds in its environment and on its machine — ``sdk.Client()``, raw nats-py
with the credential it was given, the filesystem — tries every action on the list. Each one must
fail (refused by the server's permissions or the kernel's), and everything of the victim's must
be intact afterwards. Real operator-mode nats-server, real executor with per-run credentials
and, where it may switch UIDs (root, as in CI), a UID of its own for the run."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import names, store
from broker.authority import Authority
from broker.connection import Bus, connect
from broker.models import ExecutorRecord, OrchestrationRecord, RunRecord, TaskRecord
from broker.server import EmbeddedServer, ServerSettings
from broker.status import RunStatus
from executor.uids import can_switch_uids
from tests.conftest import as_role
from tests.helpers import Daemon, wait_for_executors
from tests.test_executor import log_lines, run_once, texts, upload, wait_line, wait_run

VICTIM = """
import sdk, time
print("victim secret", sdk.task_args()["secret"], flush=True)
time.sleep(float(sdk.task_args().get("sleep", 0)))
"""

# What every hostile orchestration of these tests defines: ``attempt(name, action)`` prints
# one line "RESULT <name>: denied|done <detail>", which ``results_of`` reads back.
PROBES = r"""
def report(name, ok, detail=""):
    detail = str(detail).replace("\n", " ")
    print(f"RESULT {name}: {'done' if ok else 'denied'} {detail}"[:300], flush=True)

def attempt(name, action):
    try:
        value = action()
    except Exception as exc:
        report(name, False, f"{type(exc).__name__}: {exc}")
    else:
        report(name, True, repr(value))
"""


def results_of(out: list[str]) -> dict[str, str]:
    """``{name: "done …" | "denied …"}`` from a hostile run's stdout lines."""
    return {
        line.removeprefix("RESULT ").split(": ", 1)[0]: line.split(": ", 1)[1]
        for line in out
        if line.startswith("RESULT ")
    }


HOSTILE = (
    r"""
import asyncio, json, os, sys, time
import sdk

args = sdk.task_args()
results = {}

"""
    + PROBES
    + r"""
# --- through the SDK, with the credential the run was given ---------------------------------
wl = sdk.Client()
attempt("sdk own task", lambda: wl.get_task_by_id(os.environ["TASKBUS_TASK_ID"]).name())
attempt("sdk read victim args", lambda: wl.get_task_by_id(args["victim_task"]).input_data())
attempt("sdk list tasks", lambda: [t.input_data() for t in wl.list_tasks()])
victim = lambda: wl.get_task_by_id(args["victim_task"])
attempt("sdk victim logs", lambda: list(victim().last_runs()[0].logs()))
attempt("sdk delete victim orchestration",
        lambda: wl.get_orchestration(args["victim_orch"]).delete())
attempt("sdk kill victim task", lambda: wl.get_task_by_id(args["victim_task"]).kill())
attempt("sdk upload", lambda: wl.upload_orchestration(bytes_buffer=open(__file__, "rb").read()))

# --- raw nats-py with whatever the environment holds -----------------------------------------
import nats
from nats.js.kv import KeyValue

async def raw():
    errors = []
    async def error_cb(exc):
        errors.append(str(exc))
    nc = await nats.connect(os.environ["TASKBUS_URL"],
                            user_credentials=os.environ.get("TASKBUS_CREDS"),
                            error_cb=error_cb, max_reconnect_attempts=0)
    js = nc.jetstream()

    async def probe(name, coro, timeout=0.5):
        before = len(errors)
        try:
            value = await asyncio.wait_for(coro, timeout)
        except Exception as exc:
            report(name, False, f"{type(exc).__name__} {errors[before:]}")
        else:
            refused = errors[before:]
            report(name, not refused, repr(value)[:100] + str(refused))

    def kv(bucket):
        return KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=js,
                        direct=True)

    await probe("raw read victim task", kv("taskbus_tasks").get(args["victim_task_key"]))
    await probe("raw rewrite victim run", kv("taskbus_runs").put(args["victim_run_key"],
                json.dumps({"task_id": args["victim_task"], "run_id": "x", "status": "success",
                            "created_at": "2026-01-01T00:00:00Z"}).encode()))
    await probe("raw kill victim task", kv("taskbus_tasks").put(args["victim_task_key"], b"{}"))
    await probe("raw delete victim orchestration",
                kv("taskbus_orchestrations").delete(args["victim_orch_key"]))
    await probe("raw fake heartbeat", kv("taskbus_executors").put("fake-executor", b"{}"))
    await probe("raw delete logs stream", js.delete_stream("TASKBUS_LOGS"))
    await probe("raw purge runs", js.purge_stream("KV_taskbus_runs"))
    victim_logs = args["victim_logs"]
    await probe("raw read victim logs", js.subscribe(victim_logs, stream="TASKBUS_LOGS",
                ordered_consumer=True))
    await probe("raw logs direct get", js.get_msg("TASKBUS_LOGS", subject=victim_logs,
                                                  direct=True))
    await probe("raw read victim zip", js.get_msg("TASKBUS_ZIPS", subject=args["victim_zip"],
                                                  direct=True))
    await probe("raw overwrite victim zip", js.publish(args["victim_zip"], b"{}"))

    async def take_run_request():
        sub = await js.pull_subscribe_bind(consumer="runq_default", stream="TASKBUS_RUNQ")
        return await sub.fetch(1, timeout=0.5)
    await probe("raw take run requests", take_run_request())

    async def snoop(subject):
        await nc.subscribe(subject)
        await nc.flush()
        await nc.flush()
        return subject
    await probe("raw subscribe everything", snoop(">"))
    await probe("raw subscribe all inboxes", snoop("_INBOX.>"))
    await probe("raw publish a run request", js.publish("taskbus.runq.default", b"{}"))
    await nc.close()

asyncio.run(raw())

# --- the filesystem ---------------------------------------------------------------------------
def read(path):
    return lambda: open(path, "rb").read()[:40]

def write(path):
    def action():
        with open(path, "ab") as handle:
            handle.write(b"\n# pwned\n")
    return action

attempt("fs executor credential", read(args["executor_creds"]))
attempt("fs run signing key", read(args["run_signing_key"]))
attempt("fs admin credential", read(args["admin_creds"]))
attempt("fs executor environ", read(f"/proc/{args['executor_pid']}/environ"))
attempt("fs victim cached code", write(args["victim_tree"] + "/main.py"))
secret_in_env = any(args["executor_secret"] in v for v in os.environ.values())
report("env executor secret", secret_in_env)
print(open(os.environ["TASKBUS_CREDS"]).read(), flush=True)  # to use it from outside later
print("HOSTILE DONE", flush=True)
"""
)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """An authority directory outside pytest's 0700 folders: a run could reach it, so only
    the files' own 0600 modes (and the run's own UID) keep it out."""
    path = Path(tempfile.mkdtemp(prefix="taskbus-attack-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(240)
async def test_a_hostile_orchestration_gets_nothing(
    tmp_path: Path,
    open_dir: Path,
    start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authority = Authority(open_dir / "auth").ensure_local()
    settings = ServerSettings(
        data_dir=tmp_path / "nats", port=0, config_file=authority.server_config
    )
    with EmbeddedServer(settings) as server:
        admin = await connect(as_role(server.url, authority, "admin"))
        try:
            await attack(server, authority, admin, tmp_path, start_daemon, monkeypatch)
        finally:
            await admin.close()


async def attack(
    server: EmbeddedServer,
    authority: Authority,
    admin: Bus,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor_secret = "executor-only-secret-4711"
    monkeypatch.setenv("TASKBUS_PASSWORD", executor_secret)  # in the executor's environment
    monkeypatch.setenv(names.ENV_CREDS, str(authority.creds_path("executor")))
    monkeypatch.setenv(names.ENV_RUN_SIGNING_KEY, str(authority.run_signing_key))
    uids = "61000-61183" if can_switch_uids() else "none"
    work = tmp_path / "executor"
    start_daemon("executor", "--url", server.url, "--work-dir", str(work), "--run-uids", uids)
    # Users may not create run records: the scheduler starts their run-once tasks.
    scheduler_creds = str(authority.creds_path("scheduler"))
    start_daemon("broker.scheduler", "--url", server.url, "--creds", scheduler_creds)
    await wait_for_executors(admin, 1)
    [heartbeat] = [r for _, r in (await store.scan(admin, names.EXECUTORS, ExecutorRecord)).items()]

    user = await connect(as_role(server.url, authority, "user"))
    try:
        victim_orch = await upload(user, {"main.py": VICTIM})
        victim = await run_once(
            user, victim_orch, name="victim", json_args={"secret": "victim-args-0042"}
        )
        victim_run = await wait_run(user, victim.id)
        assert victim_run.status is RunStatus.SUCCESS, victim_run
        victim_logs = texts(await log_lines(user, victim_run), "stdout")
        assert "victim secret victim-args-0042" in victim_logs

        hostile_orch = await upload(user, {"main.py": HOSTILE})
        hostile = await run_once(
            user,
            hostile_orch,
            name="hostile",
            timeout=120,
            json_args={
                "victim_task": victim.id,
                "victim_run": victim_run.run_id,
                "victim_task_key": victim.key,
                "victim_run_key": victim.run_key(victim_run.run_id),
                "victim_logs": names.logs_subject("default", victim.id, victim_run.run_id),
                "victim_orch": victim_orch.id,
                "victim_orch_key": victim_orch.key,
                "victim_zip": names.zip_subject("default", victim_orch.sha, "m"),
                "executor_creds": str(authority.creds_path("executor")),
                "admin_creds": str(authority.creds_path("admin")),
                "run_signing_key": str(authority.run_signing_key),
                "executor_pid": heartbeat.pid,
                "victim_tree": str(work / "trees" / victim_orch.sha),
                "executor_secret": executor_secret,
            },
        )
        hostile_run = await wait_run(user, hostile.id, timeout_s=120)
        out = texts(await log_lines(user, hostile_run), "stdout")
        err = texts(await log_lines(user, hostile_run), "stderr")
        assert "HOSTILE DONE" in out, (hostile_run, out, err)
        results = results_of(out)
        print(json.dumps(results, indent=1))
        # What a run may do: read its own task.
        assert results.pop("sdk own task").startswith("done"), results
        for name, outcome in results.items():
            assert outcome.startswith("denied"), (name, outcome)
        for name in ("sdk read victim args", "sdk kill victim task", "sdk victim logs"):
            assert "PermissionDenied" in results[name], (name, results[name])
        assert "victim-args-0042" not in "\n".join(out + err)
        # Its own credential, printed, is masked before the lines are stored.
        assert "-----BEGIN NATS USER JWT-----" in out
        assert not [line for line in out if line.startswith(("eyJ", "SU"))], out

        # Everything of the victim's is intact.
        task_now = await store.get(admin.tasks, victim.key, TaskRecord)
        assert task_now is not None and not task_now[0].killed
        assert task_now[0].json_args == {"secret": "victim-args-0042"}
        run_now = await store.get(admin.runs, victim.run_key(victim_run.run_id), RunRecord)
        assert run_now is not None and run_now[0] == victim_run
        assert await store.get(admin.orchestrations, victim_orch.key, OrchestrationRecord)
        assert texts(await log_lines(user, victim_run), "stdout") == victim_logs
        assert await store.get(admin.executors, "fake-executor", ExecutorRecord) is None
        assert (await admin.js.stream_info(names.LOGS_STREAM)).state.messages > 0
        again = await run_once(
            user, victim_orch, name="again", json_args={"secret": "victim-args-0042"}
        )
        again_run = await wait_run(user, again.id)
        assert again_run.status is RunStatus.SUCCESS
        await wait_line(user, again_run, "victim secret victim-args-0042")
    finally:
        await user.close()
