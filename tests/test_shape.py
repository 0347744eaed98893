"""The shape of the code, as a user meets it: the SDK and its user commands never load the
launcher, the console or the executor; ``taskbus --help`` loads no nats; every command and
daemon takes the same connection options; the console takes credentials too."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from broker.server import EmbeddedServer, ServerSettings
from console.__main__ import settings_from
from console.app import TaskbusApp
from console.state import Link
from sdk.cli.parser import USER_COMMANDS
from tests.helpers import REPO, Daemon, daemon_env, make_zip
from tests.test_console_support import wait_for

# Runs every user command (and its --help) through `python -m sdk.cli`'s main in one process,
# then prints the Taskbus modules that process loaded.
EVERY_USER_COMMAND = """
import json, sys
import sdk
from sdk.cli import main

url, zip_path = sys.argv[1], sys.argv[2]
codes = {}

def run(*argv):
    try:
        codes[argv[0]] = main([*argv, "--url", url])
    except SystemExit as done:  # --help
        codes[argv[0] + " --help"] = done.code

run("upload", zip_path, "--name", "hello", "--wait", "--timeout", "60")
run("orchestrations")
run("run", "hello", "--name", "once")
run("schedule", "hello", "--name", "nightly", "--cron", "0 3 * * *")
run("tasks")
with sdk.Client(url) as client:
    ids = {task.name(): task.id() for task in client.list_tasks()}
run("runs", ids["once"])
run("logs", ids["once"])
run("pause", ids["nightly"])
run("resume", ids["nightly"])
run("kill", ids["nightly"])
for name in %(commands)r:
    run(name, "--help")
loaded = sorted(sys.modules)
print(json.dumps({"codes": codes, "loaded": loaded}))
""" % {"commands": USER_COMMANDS}  # noqa: UP031 (a script with braces of its own)


def test_the_sdk_and_every_user_command_never_import_console_or_executor(
    nats_url: str, executor: Daemon, tmp_path: Path
) -> None:
    hello = tmp_path / "hello.zip"
    hello.write_bytes(make_zip({"main.py": "print('hi')\n"}))
    done = subprocess.run(
        [sys.executable, "-c", EVERY_USER_COMMAND, nats_url, str(hello)],
        env=daemon_env(), cwd=REPO, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    ran = {name: code for name, code in report["codes"].items() if "--help" not in name}
    assert set(ran) == set(USER_COMMANDS) and set(ran.values()) == {0}, report["codes"]
    assert {code for name, code in report["codes"].items() if "--help" in name} == {0}
    packages = {name.split(".")[0] for name in report["loaded"]}
    assert "console" not in packages and "executor" not in packages
    assert "broker.server" not in report["loaded"]  # the launcher's nats-server: not ours
    assert {"sdk", "broker", "nats"} <= packages  # it did connect


def test_no_module_of_sdk_or_broker_imports_the_console_or_the_executor() -> None:
    """Also not by name, through importlib: the launcher (console.cli) is the only way in."""
    found = []
    for path in sorted([*(REPO / "sdk").rglob("*.py"), *(REPO / "broker").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in {
                "import_module",
                "find_spec",
            }:
                names = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
            found += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in {"console", "executor"}
            ]
    assert found == []


def loaded_by(*argv: str) -> set[str]:
    """The modules ``python -m console.cli ARGV`` (the taskbus script) loads."""
    script = (
        "import sys, json\n"
        "from console.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        env=daemon_env(), cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def test_taskbus_help_and_tasks_load_only_what_they_use(nats_url: str) -> None:
    heavy = {"nats", "msgspec", "anyio", "textual", "console.launch", "console.app", "executor"}
    assert loaded_by("--help") & heavy == set()
    assert loaded_by("tasks", "--help") & heavy == set()
    tasks = loaded_by("tasks", "--url", nats_url)
    assert "nats" in tasks  # it did list the tasks
    assert (
        tasks & {"textual", "console.launch", "console.app", "executor", "broker.server"} == set()
    )


CONNECTION_OPTIONS = ["--url", "--user", "--password", "--token", "--creds", "--tls-ca"]
ENTRY_POINTS = [
    ["console.cli"], ["console.cli", "tasks"], ["console.cli", "executor"],
    ["console.cli", "scheduler"], ["console.cli", "console"], ["sdk.cli"], ["sdk.cli", "logs"],
    ["executor"], ["broker.scheduler"], ["console"],
]  # fmt: skip


def connection_help(module: str, *argv: str) -> dict[str, str]:
    """Each option of the "connection" group in ``--help``, with its help text."""
    done = subprocess.run(
        [sys.executable, "-m", module, *argv, "--help"],
        env={**daemon_env(), "COLUMNS": "100"}, cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("\nconnection:\n", 1)[1].split("\n\n", 1)[0]
    options: dict[str, str] = {}
    for line in block.splitlines():
        found = re.match(r"\s+(--[\w-]+) [A-Z_]+\s*(.*)", line)
        if found:
            option = found.group(1)
            options[option] = found.group(2)
        else:
            options[option] += " " + line.strip()
    return {name: " ".join(text.split()) for name, text in options.items()}


def test_every_command_and_daemon_takes_the_same_connection_options() -> None:
    reference = connection_help("console.cli")
    assert list(reference) == CONNECTION_OPTIONS
    assert "$TASKBUS_CREDS" in reference["--creds"]
    for module, *argv in ENTRY_POINTS[1:]:
        assert connection_help(module, *argv) == reference, (module, argv)


async def test_the_console_takes_credentials_on_its_command_line(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    settings, _ = settings_from(["--creds", str(creds), "--url", "nats://h:4222"])
    assert settings.creds_file == str(creds) and settings.urls == ["nats://h:4222"]
    guarded = ServerSettings(
        data_dir=tmp_path / "nats", port=0, extra_args=("--user", "ops", "--pass", "s3cret")
    )
    with EmbeddedServer(guarded) as server:
        wrong, _ = settings_from(["--url", server.url, "--user", "ops", "--password", "nope"])
        app = TaskbusApp(wrong, retry_s=0.1, freeze_gc=False)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.state.attempts >= 1 and app.state.link_detail)
            assert app.state.link is Link.DOWN and "refused the credential" in app.state.link_detail
        right, _ = settings_from(["--url", server.url, "--user", "ops", "--password", "s3cret"])
        app = TaskbusApp(right, retry_s=0.1, freeze_gc=False)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.state.link is Link.CONNECTED)
