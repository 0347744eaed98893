"""``taskbus executor|scheduler|console``: become that daemon.

The executor and the scheduler are exec'd as ``python -P -m <module> --url URL ...``
(credentials in the environment, never on a command line ``ps`` shows); the console runs in
this process.
"""

from __future__ import annotations

import argparse
import os
import sys

from broker.settings import ConnectSettings
from sdk.cli import OK

# `python -P`: the daemon imports the installed packages, never an `executor/` (or `broker/`,
# `console/`) folder that happens to be in the directory the command was started from.
SAFE_PATH = ("-P",)


def child_env(settings: ConnectSettings) -> dict[str, str]:
    """The environment for a daemon: ours, plus the URL and credentials the way it reads them."""
    return {**os.environ, **settings.environment()}


def _become(module: str, settings: ConnectSettings, argv: list[str]) -> int:
    """Become ``python -P -m module --url URL argv...`` (exec: its signals, its exit code)."""
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
    settings = ConnectSettings.from_args(args, name="taskbus-executor")
    return _become("executor", settings, [*argv, *args.extra])


def scheduler(args: argparse.Namespace) -> int:
    settings = ConnectSettings.from_args(args, name="taskbus-scheduler")
    return _become("broker.scheduler", settings, list(args.extra))


def console(args: argparse.Namespace) -> int:
    from console import run_console

    settings = ConnectSettings.from_args(args, name="taskbus-console")
    run_console(settings, web=args.web, host=args.host, port=args.port)
    return OK
