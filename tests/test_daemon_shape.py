"""One daemon shape: the executor and the scheduler are laid out alike (daemon class, service,
settings, ``__main__``) on one shared process shell (``broker.service``), with one exit-code
table, one parent-death helper and one restart back-off."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from broker.backoff import Backoff
from broker.errors import ExitCode
from broker.server import free_port
from sdk import cli
from tests.helpers import REPO, daemon_env

DAEMONS = {"executor": REPO / "executor", "broker.scheduler": REPO / "broker" / "scheduler"}
PACKAGES = ("broker", "executor", "console", "sdk")


def _modules() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text())
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def test_the_executor_and_the_scheduler_have_the_same_files() -> None:
    for module, folder in DAEMONS.items():
        for name in ("daemon.py", "service.py", "settings.py", "__main__.py"):
            assert (folder / name).is_file(), f"{module} has no {name}"
        service = (folder / "service.py").read_text()
        assert "from broker import roles, service" in service, module  # the shared shell
        assert "def main(" in service and "def serve(" in service, module
        main = (folder / "__main__.py").read_text()
        assert f"from {module}.service import main" in main, module
    assert not (REPO / "broker" / "scheduler" / "runner.py").exists()  # a process shell


def test_one_parent_death_helper_one_back_off_one_exit_code_table() -> None:
    prctl_users, backoffs, exit_tables = [], [], []
    for path, tree in _modules().items():
        where = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id.endswith("PR_SET_PDEATHSIG"):
                prctl_users.append(where)
            if isinstance(node, ast.ClassDef) and "backoff" in node.name.lower():
                backoffs.append(where)
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and node.value.value in (130, 3)
                and any(
                    isinstance(t, ast.Name) and t.id in ("INTERRUPTED", "NOT_CONNECTED")
                    for t in node.targets
                )
            ):
                exit_tables.append(where)
    assert set(prctl_users) == {"broker/service.py"}
    assert backoffs == ["broker/backoff.py"]
    assert set(exit_tables) == {"broker/errors.py"}
    assert (cli.OK, cli.FAILED, cli.USAGE, cli.NOT_CONNECTED, cli.INTERRUPTED) == (
        ExitCode.OK,
        ExitCode.FAILED,
        ExitCode.USAGE,
        ExitCode.NOT_CONNECTED,
        ExitCode.INTERRUPTED,
    )


def test_the_back_off_doubles_to_its_cap_and_starts_over_after_a_healthy_run() -> None:
    backoff = Backoff(first_s=1.0, max_s=30.0, healthy_s=60.0)
    assert [backoff.after(uptime_s=5.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after(uptime_s=61.0) == 1.0  # it stayed up: starts over
    assert backoff.after(uptime_s=0.0) == 2.0
    # Days of crashing do not overflow the doubling.
    assert Backoff(first_s=1.0, max_s=30.0).delay_s(5000) == 30.0
    assert Backoff(first_s=2.0, max_s=300.0).delay_s(0) == 0.0  # no failure, no wait


@pytest.mark.parametrize("module", sorted(DAEMONS))
def test_a_daemon_with_no_server_says_so_in_one_line_and_exits_3(
    module: str, tmp_path: Path
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    args = ["--work-dir", str(tmp_path)] if module == "executor" else []
    done = subprocess.run(
        [sys.executable, "-m", module, "--url", url, *args],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == ExitCode.NOT_CONNECTED, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Could not connect to NATS" in errors[0], done.stderr
