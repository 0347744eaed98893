"""The ``taskbus`` CLI as a user runs it: real subprocesses against a real server (and a real
executor where runs must finish); --json output parsed, exit codes and error lines checked."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import store
from broker.connection import Bus
from broker.models import RunRecord
from broker.server import free_port
from broker.status import RunStatus
from console.cli import main
from tests.helpers import REPO, Daemon, daemon_env, make_zip

COMMANDS = [
    "up", "server", "executor", "scheduler", "console", "upload", "orchestrations", "run",
    "schedule", "tasks", "runs", "logs", "kill", "pause", "resume",
]  # fmt: skip


def taskbus(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "console.cli", *args]
    if url is not None:
        argv += ["--url", url]
    return subprocess.run(
        argv, env=daemon_env(), cwd=REPO, capture_output=True, text=True, timeout=90
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskbus: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], *([name] for name in COMMANDS)):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0
        assert "usage: taskbus" in capsys.readouterr().out
    assert main([]) == 2  # no command: help on stderr, usage exit code
    assert "COMMAND" in capsys.readouterr().err


def test_daemon_commands_take_their_daemons_own_options() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    # Passed through to `python -m executor`: it parses them, then finds no server (exit 3).
    result = taskbus("executor", "--ack-wait", "60", "--no-zygote", "--slots", "2", url=url)
    assert result.returncode == 3 and "Could not connect to NATS at " + url in result.stderr
    result = taskbus("scheduler", "--on-time-s", "5", url=url)
    assert result.returncode == 3 and "Could not connect to NATS at " + url in result.stderr
    # What neither taskbus nor the daemon knows is a usage error, from the daemon's parser.
    result = taskbus("executor", "--bogus", url=url)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr
    # Other commands stay strict.
    result = taskbus("tasks", "--ack-wait", "60", url=url)
    assert result.returncode == 2 and "unrecognized arguments: --ack-wait 60" in result.stderr


def test_not_connected_exit_code_and_one_clear_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = taskbus("tasks", url=url)
    assert result.returncode == 3
    line = one_error_line(result)
    assert url in line and "taskbus up" in line


def test_bad_input_exit_2_and_nothing_stored(
    nats_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("hello")
    good = tmp_path / "hello.zip"
    good.write_bytes(make_zip({"main.py": "print(1)"}))
    args_file = tmp_path / "args.json"
    args_file.write_text("[1, 2]")
    url = ["--url", nats_url]
    assert main(["upload", str(good), "--name", "hello", *url]) == 0
    capsys.readouterr()
    cases = [
        (["upload", str(not_zip)], "Not a zip"),
        (["upload", str(tmp_path / "missing.zip")], "missing.zip"),
        (["run", "hello", "--name", "t", "--args", "{bad"], "not valid JSON"),
        (["run", "hello", "--name", "t", "--args", "[1]"], "must be a dict"),
        (["run", "hello", "--name", "t", "--args", f"@{args_file}"], "must be a dict"),
        (["run", "hello", "--name", "t", "--args", "@/nonexistent"], "cannot read"),
        (["run", "hello", "--name", "t", "--timeout", "0"], "positive whole number"),
        (["run", "nope", "--name", "t"], "No orchestration"),
        (["schedule", "hello", "--name", "s", "--cron", "* *"], "fields"),
        (["schedule", "hello", "--name", "s", "--cron", "* * * * *", "--tz", "X/Y"], "zone"),
        (["runs", "not-an-id"], "not a valid task id"),
        (["kill", "7b5f0e8a-3c1d-4f2e-9a6b-1c2d3e4f5a6b"], "No task"),
    ]
    for argv, message in cases:
        assert main([*argv, *url]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("taskbus: error: ") and message in err, (argv, err)
        assert "\n" not in err
    assert main(["tasks", "--json", *url]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["orchestrations", "--json", *url]) == 0
    assert [o["name"] for o in json.loads(capsys.readouterr().out)] == ["hello"]


def test_user_commands_end_to_end(nats_url: str, executor: Daemon, tmp_path: Path) -> None:
    hello = tmp_path / "hello.zip"
    hello.write_bytes(make_zip({"main.py": "import sdk\nprint('n is', sdk.task_args()['n'])\n"}))
    failing = tmp_path / "failing.zip"
    failing.write_bytes(make_zip({"main.py": "raise SystemExit(4)\n"}))

    done = taskbus("upload", str(hello), "--name", "hello", "--wait", "--json", url=nats_url)
    assert done.returncode == 0, done.stderr
    orch = json.loads(done.stdout)
    assert (
        orch["name"] == "hello" and orch["status"] == "ready" and orch["file_name"] == "hello.zip"
    )

    listed = taskbus("orchestrations", url=nats_url)
    assert listed.returncode == 0 and "hello.zip" in listed.stdout
    assert listed.stdout.split()[:3] == ["id", "name", "status"]

    done = taskbus("run", "hello", "--name", "t1", "--args", '{"n": 5}', "--wait", "--json",
                   url=nats_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["status"] == "success" and task["active"] is False
    assert task["json_args"] == {"n": 5} and task["type"] == "Temporary Run"

    done = taskbus("run", "hello", "--name", "t2", "--args", '{"n": 6}', "--follow", url=nats_url)
    assert done.returncode == 0, done.stderr
    assert any(line.endswith(" n is 6") for line in done.stdout.splitlines()), done.stdout
    assert "success" in done.stderr
    # --follow --json is JSON Lines: each log line a JSON string, then the task as one object.
    done = taskbus("run", "hello", "--name", "t2j", "--args", '{"n": 7}', "--follow", "--json",
                   url=nats_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    *lines, final = [json.loads(line) for line in done.stdout.splitlines()]
    assert any(line.endswith(" n is 7") for line in lines) and final["status"] == "success"

    failed_orch = taskbus("upload", str(failing), "--wait", url=nats_url)
    assert failed_orch.returncode == 0, failed_orch.stderr
    done = taskbus("run", "failing", "--name", "t3", "--wait", "--json", url=nats_url)
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "failed"

    tasks = json.loads(taskbus("tasks", "--json", url=nats_url).stdout)
    assert [t["name"] for t in tasks] == ["t3", "t2j", "t2", "t1"]
    runs = taskbus("runs", task["id"], "--json", url=nats_url)
    assert runs.returncode == 0
    (run,) = json.loads(runs.stdout)
    assert run["status"] == "success" and run["exit_code"] == 0

    logs = taskbus("logs", task["id"], url=nats_url)
    assert logs.returncode == 0 and logs.stdout.strip().splitlines()[-1].count(" ") >= 1
    assert " n is 5" in logs.stdout
    logs_json = json.loads(taskbus("logs", task["id"], run["run_id"], "--json", "--limit", "1",
                                   url=nats_url).stdout)  # fmt: skip
    assert len(logs_json) == 1

    sched = taskbus("schedule", "hello", "--name", "cron", "--cron", "0 3 * * *", "--tz",
                    "Europe/Berlin", "--json", url=nats_url)  # fmt: skip
    assert sched.returncode == 0, sched.stderr
    cron = json.loads(sched.stdout)
    assert cron["schedule"] == "0 3 * * *" and cron["next_run_at"] and cron["status"] == "started"
    paused = json.loads(taskbus("pause", cron["id"], "--json", url=nats_url).stdout)
    assert paused["status"] == "paused"
    resumed = json.loads(taskbus("resume", cron["id"], "--json", url=nats_url).stdout)
    assert resumed["status"] == "started"
    killed = taskbus("kill", cron["id"], url=nats_url)
    # No run to stop: the CLI reports the task's status after the kill, already final.
    assert killed.returncode == 0 and killed.stdout.rstrip().endswith(": killed")
    only_killed = json.loads(taskbus("tasks", "--killed", "--json", url=nats_url).stdout)
    assert [t["id"] for t in only_killed] == [cron["id"]]


async def test_a_continuous_task_from_the_cli_runs_again_and_again_until_killed(
    bus: Bus, nats_url: str, executor: Daemon, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    start_daemon("broker.scheduler", "--url", nats_url)
    hello = tmp_path / "hello.zip"
    hello.write_bytes(make_zip({"main.py": "print('again')\n"}))
    up = await asyncio.to_thread(taskbus, "upload", str(hello), "--wait", url=nats_url)
    assert up.returncode == 0, up.stderr
    misuse = await asyncio.to_thread(
        taskbus, "run", "hello", "--name", "loop", "--continuous", "--wait", url=nats_url
    )
    assert misuse.returncode == 2 and "--continuous runs until `taskbus kill`" in misuse.stderr

    made = await asyncio.to_thread(
        taskbus, "run", "hello", "--name", "loop", "--continuous", "--json", url=nats_url
    )
    assert made.returncode == 0, made.stderr
    task = json.loads(made.stdout)
    assert task["type"] == "Continuous Run" and task["active"] is True
    successes: set[str] = set()
    async with asyncio.timeout(60):
        async for key, run in store.watch(bus.runs, RunRecord, f"*.{task['id']}.>"):
            if run is not None and run.status is RunStatus.SUCCESS:
                successes.add(key)
            if len(successes) >= 3:
                break
    killed = await asyncio.to_thread(taskbus, "kill", task["id"], url=nats_url)
    assert killed.returncode == 0, killed.stderr
    final = json.loads((await asyncio.to_thread(taskbus, "tasks", "--killed", "--json",
                                                url=nats_url)).stdout)  # fmt: skip
    assert [t["id"] for t in final] == [task["id"]]


# --- Ctrl+C while following -------------------------------------------------------------------
CHATTY = """
import itertools, time
for i in itertools.count():
    print("tick", i, flush=True)
    time.sleep(0.05)
"""
FOLLOW_IN_SDK = """
import sys
import sdk

with sdk.Client(sys.argv[1]) as client:
    run = client.get_task_by_id(sys.argv[2]).last_runs()[0]
    try:
        for line in run.logs(follow=True):
            print(line, flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # the client is still usable
    print("status", run.status(), "lines", len(run.logs()) > 0, flush=True)
"""


def _interrupt_after_first_line(argv: list[str]) -> tuple[int, str, str]:
    """Start ``argv``, wait for its first output line, SIGINT it as a terminal's Ctrl+C does."""
    with subprocess.Popen(
        argv, env=daemon_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            first = ""
            while "tick" not in first:  # a line the run printed (not the executor's own)
                first = process.stdout.readline() or "(end of output)"
                if first == "(end of output)":
                    break
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert "tick" in first, first + out + err
    return process.returncode, first + out, err


def test_ctrl_c_while_following_exits_quietly_and_the_client_stays_usable(
    nats_url: str, executor: Daemon, tmp_path: Path
) -> None:
    chatty = tmp_path / "chatty.zip"
    chatty.write_bytes(make_zip({"main.py": CHATTY}))
    assert taskbus("upload", str(chatty), "--wait", url=nats_url).returncode == 0
    made = taskbus("run", "chatty", "--name", "c", "--json", url=nats_url)
    task_id = json.loads(made.stdout)["id"]
    cli = [sys.executable, "-m", "console.cli", "--url", nats_url]
    try:
        for argv in (
            [*cli, "logs", task_id, "-f"],
            [*cli, "run", "chatty", "--name", "followed", "--follow"],
        ):
            code, _out, err = _interrupt_after_first_line(argv)
            assert code == 130, err
            assert "Traceback" not in err and "RuntimeError" not in err, err
        code, out, err = _interrupt_after_first_line(
            [sys.executable, "-c", FOLLOW_IN_SDK, nats_url, task_id]
        )
        assert code == 0 and err == "", err
        assert "interrupted" in out and "status running lines True" in out, out
    finally:
        for task in json.loads(taskbus("tasks", "--json", url=nats_url).stdout):
            taskbus("kill", task["id"], url=nats_url)
