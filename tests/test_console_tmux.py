"""The real ``python -m console`` in a real terminal (tmux) against a live server and a real
executor: what a person sees, read back with ``capture-pane``."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from broker import catalog
from broker.connection import Bus
from broker.status import TaskKind
from tests.helpers import REPO, Daemon, daemon_env, make_zip
from tests.test_console_support import wait_ready, wait_runs_ended

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

SCRIPT = """
import time
for i in range(400):
    print(f"tmux tick {i} \\x1b[36mcyan\\x1b[0m", flush=True)
    time.sleep(0.05)
"""


class Tmux:
    """One tmux server on a private socket, so nothing else's sessions are touched."""

    def __init__(self, folder: Path) -> None:
        self.socket = str(folder / "tmux.sock")
        self.returncode: int | None = None

    async def run(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "tmux", "-S", self.socket, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        self.returncode = process.returncode
        return out.decode(errors="replace")

    async def alive(self) -> bool:
        await self.run("has-session", "-t", "console")
        return self.returncode == 0

    async def screen(self) -> str:
        return await self.run("capture-pane", "-p", "-t", "console")

    async def wait_for(
        self, *needles: str, timeout_s: float = 30.0, same_line: bool = False
    ) -> str:
        """Read the pane until every needle shows (on one line, if asked)."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = await self.screen()
            lines = text.splitlines() if same_line else [text]
            if any(all(needle in line for needle in needles) for line in lines):
                return text
            await asyncio.sleep(0.1)
        raise AssertionError(f"{needles} never showed; the pane was:\n{text}")


async def test_real_console_in_tmux_shows_a_running_task_and_its_logs(
    bus: Bus, nats_url: str, executor: Daemon, tmp_path: Path
) -> None:
    orch = await catalog.upload_orchestration(
        bus, make_zip({"main.py": SCRIPT}), name="tmux demo", file_name="demo.zip"
    )
    await wait_ready(bus, orch.id)
    tmux = Tmux(tmp_path)
    env = daemon_env()
    # COLUMNS/LINES from the test runner would override the pane's real size.
    argv = ["env", "-u", "COLUMNS", "-u", "LINES", f"PYTHONPATH={env['PYTHONPATH']}"]
    command = shlex.join([*argv, sys.executable, "-m", "console", "--url", nats_url])
    await tmux.run(
        "new-session", "-d", "-x", "140", "-y", "45", "-s", "console", "-c", str(REPO), command
    )
    try:
        await tmux.wait_for("connected", "tasks 0")
        task = await catalog.create_task(bus, orch, name="[tmux] demo", kind=TaskKind.RUN_ONCE)
        # the status goes live without a key press
        await tmux.wait_for("[tmux] demo", "Temporary Run", "started", "running", same_line=True)
        await tmux.run("send-keys", "-t", "console", "l")  # the newest task is highlighted
        text = await tmux.wait_for("[tmux] demo", "running", "follow", "tmux tick 3")
        # the tail follows: consecutive lines, the newest at the bottom, colours not raw
        ticks = [int(m) for m in re.findall(r"tmux tick (\d+) cyan", text)]
        assert len(ticks) >= 4 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))
        assert "\x1b" not in text and "[36m" not in text
        assert task.name in text
        await tmux.run("send-keys", "-t", "console", "q")
        deadline = time.monotonic() + 10
        while await tmux.alive():  # q quits the console (and so ends the session)
            assert time.monotonic() < deadline, "the console did not exit on q"
            await asyncio.sleep(0.1)
        await catalog.set_task_flags(bus, task.id, killed=True)  # a quick executor shutdown
        await wait_runs_ended(bus, task.id)
    finally:
        await tmux.run("kill-server")


HOSTILE_SCRIPT = """
ESC, BEL = chr(27), chr(7)
print(f"osc52 {ESC}]52;c;cHduZWQ={BEL} title {ESC}]2;pwned{BEL}", flush=True)
print("wipe " + chr(27) + "[2J" + chr(0x9b) + "2J done", flush=True)
import time
time.sleep(60)
"""


async def test_real_console_in_tmux_shows_escape_sequences_escaped_and_obeys_none(
    bus: Bus, nats_url: str, executor: Daemon, tmp_path: Path
) -> None:
    orch = await catalog.upload_orchestration(
        bus, make_zip({"main.py": HOSTILE_SCRIPT}), name="hostile", file_name="h.zip"
    )
    await wait_ready(bus, orch.id)
    tmux = Tmux(tmp_path)
    env = daemon_env()
    argv = ["env", "-u", "COLUMNS", "-u", "LINES", f"PYTHONPATH={env['PYTHONPATH']}"]
    command = shlex.join([*argv, sys.executable, "-m", "console", "--url", nats_url])
    await tmux.run("new-session", "-d", "-x", "160", "-y", "45", "-s", "console", "-c", str(REPO))
    # OSC 52 from the pane would land in tmux's paste buffers; titles in #{pane_title}
    await tmux.run("set-option", "-g", "set-clipboard", "on")
    await tmux.run("set-option", "-g", "allow-rename", "on")
    title_before = await tmux.run("display-message", "-p", "-t", "console", "#{pane_title}")
    await tmux.run("respawn-pane", "-k", "-t", "console", command)
    try:
        await tmux.wait_for("connected", "tasks 0")
        task = await catalog.create_task(
            bus, orch, name="t\x1b]52;c;cHduZWQ=\x07\x1b]2;pwned\x07\x1b[2J", kind=TaskKind.RUN_ONCE
        )
        await tmux.wait_for(r"t\x1b]52;c;cHduZWQ=\x07\x1b]2;pwned\x07\x1b[2J", "running")
        await tmux.run("send-keys", "-t", "console", "l")  # the newest task's logs
        text = await tmux.wait_for(r"osc52 \x1b]52;c;cHduZWQ=\x07 title \x1b]2;pwned\x07")
        text = await tmux.wait_for(r"wipe \x1b[2J\x9b2J done")
        assert "Tasks" not in text or "Logs" in text  # the screen was not wiped
        title = await tmux.run("display-message", "-p", "-t", "console", "#{pane_title}")
        assert "pwned" not in title and title == title_before
        assert (await tmux.run("list-buffers")).strip() == ""  # nothing reached the clipboard
        await catalog.set_task_flags(bus, task.id, killed=True)
        await wait_runs_ended(bus, task.id)
    finally:
        await tmux.run("kill-server")
