"""``taskbus executor|scheduler|console``: become another package's daemon.

Nothing imports those packages but this module, and only when asked: the daemons are exec'd as
``python -m <module> --url URL ...`` (credentials in the environment); the console is called
in this process through ``console.run_console`` when its package provides it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

from broker.settings import ConnectSettings
from sdk.cli import FAILED, OK, error
from sdk.cli.parser import connect_settings

# `python -P`: the daemon imports the installed packages, never an `executor/` (or `broker/`,
# `console/`) folder that happens to be in the directory the command was started from.
SAFE_PATH = ("-P",)


def available(module: str) -> bool:
    """True when ``python -m module`` would run (the package and its ``__main__`` exist)."""
    try:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    except ModuleNotFoundError:
        return False


def child_env(settings: ConnectSettings) -> dict[str, str]:
    """The environment for a daemon: ours, plus the URL and credentials the way it reads them."""
    return {**os.environ, **settings.environment()}


def _run_module(module: str, what: str, settings: ConnectSettings, argv: list[str]) -> int:
    """Become ``python -m module --url URL argv...`` (exec: its signals, its exit code)."""
    if not available(module):
        error(f"the {what} is not available in this installation (no module {module!r})")
        return FAILED
    command = [sys.executable, *SAFE_PATH, "-m", module, "--url", ",".join(settings.urls), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, child_env(settings))
    raise AssertionError("unreachable")  # pragma: no cover


def executor(args: argparse.Namespace) -> int:
    argv: list[str] = []
    if args.slots is not None:
        argv += ["--slots", str(args.slots)]
    if args.pool:
        argv += ["--pool", args.pool]
    if args.work_dir:
        argv += ["--work-dir", args.work_dir]
    settings = connect_settings(args, "taskbus-executor")
    return _run_module("executor", "executor", settings, [*argv, *args.extra])


def scheduler(args: argparse.Namespace) -> int:
    settings = connect_settings(args, "taskbus-scheduler")
    return _run_module("broker.scheduler", "scheduler", settings, list(args.extra))


def console(args: argparse.Namespace) -> int:
    settings = connect_settings(args, "taskbus-console")
    run_console = console_entry()
    if run_console is not None:
        run_console(settings, web=args.web, host=args.host, port=args.port)
        return OK
    web_argv = ["--web", "--host", args.host, "--port", str(args.port)] if args.web else []
    return _run_module("console", "console", settings, web_argv)


def console_entry() -> Callable[..., None] | None:
    """``console.run_console`` when the console package provides it."""
    try:
        module = importlib.import_module("console")
    except ImportError:
        return None
    entry: Callable[..., None] | None = getattr(module, "run_console", None)
    return entry
