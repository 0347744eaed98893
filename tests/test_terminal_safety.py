"""Clean terminals: names, errors, reasons, arguments and log lines with escape sequences reach
no terminal raw — not the CLI, not the SDK's reprs, not the console. They show escaped
(``\\x1b]52;…``); ``--json`` and the SDK's data keep them exact."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import unicodedata

from broker import catalog, names
from broker.connection import Bus
from broker.models import TaskRecord
from broker.status import OrchestrationStatus, RunStatus, TaskKind
from broker.text import LOG_KEEP, is_printable, printable, printable_ansi
from console.app import TaskbusApp
from console.screens.orchestrations import OrchestrationsScreen
from console.screens.run_logs import RunLogsScreen
from console.screens.task_detail import TaskDetailScreen
from tests.helpers import REPO, Daemon, daemon_env, make_zip
from tests.test_console_support import (
    SIZE,
    make_app,
    publish_logs,
    put_executor,
    put_orchestration,
    put_run,
    put_task,
    wait_for,
    wait_ready,
    wait_runs_ended,
)

CLIPBOARD = "\x1b]52;c;cHduZWQ=\x07"  # OSC 52: write "pwned" into the clipboard
TITLE = "\x1b]0;pwned\x07"  # OSC 0: set the window title
CLEAR = "\x1b[2J"  # erase the screen
C1_CSI = "\x9b2J"  # the one-character CSI of C1
HOSTILE = f"evil {CLIPBOARD}{TITLE}{CLEAR}{C1_CSI} end"
HOSTILE_SHOWN = r"evil \x1b]52;c;cHduZWQ=\x07\x1b]0;pwned\x07\x1b[2J\x9b2J end"
SCRIPT = """
import sys
print("line " + chr(27) + "]52;c;cHduZWQ=" + chr(7) + " clip", flush=True)
print("wipe " + chr(27) + "[2J" + chr(0x9b) + "2J\\tafter tab", flush=True)
print("hide rm -rf /" + chr(13) + "looks fine", flush=True)
print("[bold]", flush=True)
"""
LOG_SHOWN = [
    r"line \x1b]52;c;cHduZWQ=\x07 clip",
    "wipe \\x1b[2J\\x9b2J\tafter tab",
    r"hide rm -rf /\rlooks fine",
]


def raw_controls(text: str) -> list[str]:
    """Characters a terminal would obey rather than show (tabs and newlines aside)."""
    return [
        c
        for c in text
        if c not in "\t\n" and (unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in "\u202e")
    ]


def assert_clean(output: bytes) -> str:
    assert b"\x1b" not in output and b"\x07" not in output and b"\r" not in output
    assert b"\xc2\x9b" not in output and b"\x9b" not in output  # U+009B in UTF-8, or raw
    text = output.decode()
    assert not raw_controls(text), text
    return text


# --- the one function ---------------------------------------------------------------------
def test_printable_escapes_every_control_character_python_style() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        shown = printable(f"a{chr(code)}b")
        assert not raw_controls(shown) and shown.startswith("a") and shown.endswith("b")
        assert shown[1:-1] == repr(chr(code))[1:-1]  # as Python writes it: \x1b, \r, \t
    for code in (0x2028, 0x2029, 0x202E, 0x2066):  # line breaks and bidi overrides
        assert printable(chr(code)) == f"\\u{code:04x}"
    assert printable(HOSTILE) == HOSTILE_SHOWN
    for text in ("plain", "日本語 ✓ café", "[bold] not markup", "a\\x1b stays"):
        assert printable(text) == text and is_printable(text)
    assert printable("a\tb\nc", keep=LOG_KEEP) == "a\tb\\nc"
    assert printable(printable(HOSTILE)) == printable(HOSTILE)  # idempotent
    # for a renderer that styles colours: SGR stays, nothing else does
    assert printable_ansi(f"\x1b[31mred\x1b[0m {CLEAR}{CLIPBOARD}") == (
        "\x1b[31mred\x1b[0m \\x1b[2J\\x1b]52;c;cHduZWQ=\\x07"
    )


# --- CLI and SDK, with a real executor running a hostile orchestration --------------------
def taskbus(*args: str, url: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", *args, "--url", url],
        env=daemon_env(), cwd=REPO, capture_output=True, timeout=90,
    )  # fmt: skip


async def hostile_run(bus: Bus) -> TaskRecord:
    orch = await catalog.upload_orchestration(
        bus, make_zip({"main.py": SCRIPT}), name=f"orch {CLIPBOARD}", file_name="h.zip"
    )
    await wait_ready(bus, orch.id)
    task = await catalog.create_task(
        bus, orch, name=HOSTILE, kind=TaskKind.RUN_ONCE, json_args={"k": f"{CLEAR}{C1_CSI}"}
    )
    await wait_runs_ended(bus, task.id)
    return task


async def test_cli_tables_logs_and_errors_show_control_characters_escaped(
    bus: Bus, nats_url: str, executor: Daemon
) -> None:
    task = await hostile_run(bus)

    async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await asyncio.to_thread(taskbus, *args, url=nats_url)

    for args in (["tasks"], ["orchestrations"], ["runs", task.id], ["kill", task.id]):
        result = await cli(*args)
        assert result.returncode == 0, result.stderr
        out = assert_clean(result.stdout)
        assert r"\x1b]52;c;cHduZWQ=\x07" in out or args[0] == "runs"
        if args[0] in ("tasks", "kill"):
            assert HOSTILE_SHOWN in out
    for args in (["logs", task.id], ["logs", task.id, "-f"]):
        result = await cli(*args)
        assert result.returncode == 0, result.stderr
        out = assert_clean(result.stdout + result.stderr)
        for shown in LOG_SHOWN:
            assert shown in out  # a tab stays a tab (broker.text: it only moves forward)
        assert "[bold]" in out
    # errors naming the task: one line on stderr, escaped
    for args in (["logs", task.id, "00000000-0000-4000-8000-000000000000"], ["pause", task.id]):
        result = await cli(*args)
        assert result.returncode == 2
        err = assert_clean(result.stderr)
        assert err.startswith("taskbus: error: ") and HOSTILE_SHOWN in err
        assert err.count("\n") == 1
    # --json is exact: JSON escapes control characters itself, and they decode back
    result = await cli("tasks", "--json")
    assert_clean(result.stdout)
    (listed,) = json.loads(result.stdout)
    assert listed["name"] == HOSTILE and listed["json_args"] == {"k": f"{CLEAR}{C1_CSI}"}
    result = await cli("logs", task.id, "--json")
    assert_clean(result.stdout)
    assert any(CLIPBOARD in line for line in json.loads(result.stdout))
    result = await cli("logs", task.id, "-f", "--json")
    followed = [json.loads(line) for line in assert_clean(result.stdout).splitlines()]
    assert any("\r" in line for line in followed)

    # The SDK: data stays as written, reprs are escaped, HTML reprs HTML-escaped.
    def sdk_side() -> None:
        from sdk import Client

        with Client(nats_url) as client:
            found = client.get_task_by_id(task.id)
            assert found.name() == HOSTILE
            lines = found.last_runs()[0].logs()
            assert any(CLIPBOARD in line for line in lines)
            for shown in (repr(lines), str(lines), repr(found), repr(client.list_tasks())):
                assert not raw_controls(shown) and "\x1b" not in shown
            assert HOSTILE_SHOWN in repr(client.list_tasks()) and LOG_SHOWN[0] in repr(lines)
            assert r"\u001b[2J\u009b2J" in repr(found)  # input data: JSON escapes them
            assert "&lt;" not in found._repr_html_()  # no markup to escape in this name
            assert "evil " in found._repr_html_()

    await asyncio.to_thread(sdk_side)


# --- the console, with Pilot: what reaches the terminal -----------------------------------
TEXTUAL_SEQUENCES = re.compile(r"\x1b\[[0-9;:?]*[A-Za-z]")  # Textual's own SGR and moves


def terminal_output(app: TaskbusApp) -> str:
    """What Textual would write to the terminal for the whole screen (the compositor's full
    update rendered to escape codes), with Textual's own SGR and cursor codes taken out."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return TEXTUAL_SEQUENCES.sub("", update.render_segments(app.console))


def assert_screen_clean(app: TaskbusApp, *needles: str) -> str:
    shown = terminal_output(app)
    assert not [c for c in shown if c not in "\n" and unicodedata.category(c) == "Cc"], shown
    for needle in needles:
        assert needle in shown, f"{needle!r} not on screen:\n{shown}"
    return shown


async def test_console_shows_hostile_names_errors_reasons_and_logs_escaped(
    bus: Bus, nats_url: str
) -> None:
    short = "x\x1b]0;T\x07\x1b[2J"  # short enough for every column
    short_shown = r"x\x1b]0;T\x07\x1b[2J"
    orch = await put_orchestration(bus, 1, f"o{CLEAR}")
    broken = await put_orchestration(
        bus, 2, "broken", status=OrchestrationStatus.ERROR, error=f"bad {CLIPBOARD}\nline two"
    )
    task = await put_task(bus, 100, short, orch, kind=TaskKind.SCHEDULED, schedule="0 * * * *")
    run = await put_run(bus, task, 1000, RunStatus.FAILURE, reason=f"r{CLEAR}", executor="ex")
    await put_executor(bus, "ex", f"h{CLEAR}", running=[names.run_token(run.key)])
    await publish_logs(
        bus, task.key, run.run_id, [f"\x1b[32mgreen\x1b[0m {CLIPBOARD}", f"tab\there {C1_CSI}"]
    )
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: short_shown in terminal_output(app))
        assert_screen_clean(app, short_shown)
        await pilot.press("enter")  # the task's detail
        await wait_for(pilot, lambda: isinstance(app.screen, TaskDetailScreen))
        await wait_for(pilot, lambda: r"r\x1b[2J" in terminal_output(app))
        assert_screen_clean(app, short_shown, r"o\x1b[2J", r"r\x1b[2J", "ex")
        await pilot.press("k")  # the kill dialog names the task
        await wait_for(pilot, lambda: "Kill task?" in terminal_output(app))
        assert_screen_clean(app, short_shown)
        await pilot.press("escape")
        await pilot.press("enter")  # the run's logs
        await wait_for(pilot, lambda: isinstance(app.screen, RunLogsScreen))
        await wait_for(pilot, lambda: r"\x9b2J" in terminal_output(app))
        shown = assert_screen_clean(app, r"green \x1b]52;c;cHduZWQ=\x07", r"r\x1b[2J")
        assert "tab     here" in shown  # tabs expand to the next stop, like a terminal
        assert "32m" not in shown  # colours are styles, not text
        app.run_command("orchestrations")
        await wait_for(pilot, lambda: isinstance(app.screen, OrchestrationsScreen))
        await wait_for(pilot, lambda: "broken" in terminal_output(app))
        app.screen.table.select_key(broken.key)  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: "line two" in terminal_output(app))
        assert_screen_clean(app, r"bad \x1b]52;c;cHduZWQ=\x07", r"o\x1b[2J")
        app.run_command("executors")
        await wait_for(pilot, lambda: r"h\x1b[2J" in terminal_output(app))
        assert_screen_clean(app, r"h\x1b[2J")
        app.run_command("runs")
        await wait_for(pilot, lambda: r"r\x1b[2J" in terminal_output(app))
        assert_screen_clean(app, short_shown, r"r\x1b[2J")
