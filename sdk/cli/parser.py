"""The ``taskbus`` argument parser for the user commands over the SDK (``upload``, ``run``,
``tasks``, ``logs``, …). ``console.cli`` builds the same parser and adds the launcher's
commands (``up``, ``server``, ``executor``, ``scheduler``, ``console``) to it.

Connection options work before or after the command name. The handlers import the client
when they run: ``--help`` loads no client, no nats.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from broker.options import add_connection_options
from sdk.cli import commands as user

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = "Run ML workload orchestrations over NATS JetStream."
EPILOG = "Exit codes: 0 ok, 1 the work failed, 2 usage or bad input, 3 not connected."


class Commands:
    """The ``taskbus`` parser and its subcommands; ``add`` registers one with its handler."""

    def __init__(self, prog: str = "taskbus") -> None:
        self.parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
        add_connection_options(self.parser)
        # Subcommands take the same options; SUPPRESS keeps a value given before the command.
        self._connection = argparse.ArgumentParser(add_help=False)
        add_connection_options(self._connection, default=argparse.SUPPRESS)
        self._sub = self.parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(
        self, name: str, handler: Handler, help_: str, *, connects: bool = True
    ) -> argparse.ArgumentParser:
        parents = [self._connection] if connects else []
        command = self._sub.add_parser(name, help=help_, description=help_, parents=parents)
        command.set_defaults(handler=handler)
        return command


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _workspace(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--workspace", help=help_)


def positive(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The ``run_*`` options beyond the reference; the library checks their values."""
    parser.add_argument(
        "--retries", type=int, default=0,
        help="retry a failed, timed-out or executor-lost run this many times (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=float, default=10.0, metavar="SECONDS",
        help="seconds before the first retry, doubled for each one after (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--pool", default="default", help="only executors of this pool take the runs (default)"
    )
    parser.add_argument("--memory", help="memory limit of each run, e.g. 512MiB or 2GiB")
    parser.add_argument("--cpus", help="CPUs each run may use, e.g. 1.5")


def add_user_commands(commands: Commands) -> None:
    from sdk.cli import auth
    from sdk.cli import workspaces as workspace_commands

    command = commands.add

    p = command("upload", user.upload, "upload an orchestration zip")
    p.add_argument("path", help="the zip file")
    p.add_argument("--name", help="the orchestration's name (default: the file name)")
    p.add_argument("--wait", action="store_true", help="wait until it is packaged")
    p.add_argument("--timeout", type=float, help="seconds to wait with --wait")
    _workspace(p, "upload into this workspace (default: default)")
    json_option(p)

    p = command("orchestrations", user.orchestrations, "list orchestrations, oldest first")
    _workspace(p, "only this workspace")
    json_option(p)

    p = command("run", user.run, "run an orchestration once (or continuously)")
    p.add_argument("orchestration", metavar="ORCH", help="orchestration id or name")
    p.add_argument("--name", required=True, help="the task's name")
    p.add_argument("--args", help="json_args: a JSON object, or @file holding one")
    p.add_argument("--timeout", type=int, help="seconds the run may take")
    p.add_argument("--debug", action="store_true", help="run in debug mode")
    p.add_argument(
        "--continuous",
        action="store_true",
        help="start a new run each time one ends (back-off after failures) until `taskbus kill`",
    )
    p.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless success")
    p.add_argument(
        "--follow", "-f", action="store_true", help="print the run's logs live (implies --wait)"
    )
    _run_options(p)
    _workspace(p, "the orchestration's workspace (its tasks run there)")
    json_option(p)

    p = command("schedule", user.schedule, "run an orchestration on a cron schedule")
    p.add_argument("orchestration", metavar="ORCH", help="orchestration id or name")
    p.add_argument("--name", required=True, help="the task's name")
    p.add_argument("--cron", required=True, help="cron schedule, e.g. '*/5 * * * *'")
    p.add_argument("--tz", default="UTC", help="IANA time zone (default UTC)")
    p.add_argument("--overlap", default="allow", help="allow (default), forbid or replace")
    p.add_argument("--missed", default="latest", help="latest (default), skip or all")
    p.add_argument("--args", help="json_args: a JSON object, or @file holding one")
    p.add_argument("--timeout", type=int, help="seconds each run may take")
    _run_options(p)
    _workspace(p, "the orchestration's workspace (its tasks run there)")
    json_option(p)

    p = command("tasks", user.tasks, "list tasks, newest change first")
    p.add_argument("--killed", action="store_true", help="only killed tasks")
    _workspace(p, "only this workspace")
    json_option(p)

    p = command("runs", user.runs, "list a task's runs, newest first")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--status", default="all", help="all (default), pending, running, …")
    p.add_argument("--limit", type=int, help="at most this many")
    _workspace(p, "the task's workspace (refused if it is elsewhere)")
    json_option(p)

    p = command("logs", user.logs, "print a run's logs (the task's newest run by default)")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("run_id", metavar="RUN_ID", nargs="?", help="a run of the task")
    p.add_argument("--follow", "-f", action="store_true", help="then live lines until it ends")
    p.add_argument("--limit", type=int, help="only the last N lines")
    _workspace(p, "the task's workspace (refused if it is elsewhere)")
    json_option(p)

    for name, handler, text in (
        ("kill", user.kill, "kill a task: no more runs, the running one stopped"),
        ("pause", user.pause, "pause a scheduled or continuous task"),
        ("resume", user.resume, "resume a paused task"),
    ):
        p = command(name, handler, text)
        p.add_argument("task_id", metavar="TASK_ID")
        _workspace(p, "the task's workspace (refused if it is elsewhere)")
        json_option(p)
    workspace_commands.register(command)  # workspaces, connections
    auth.register(commands)  # auth init|user, provision


USER_COMMANDS = (
    "upload", "orchestrations", "run", "schedule", "tasks", "runs", "logs", "kill", "pause",
    "resume",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The headless ``taskbus`` (``python -m sdk.cli``): the user commands only."""
    commands = Commands()
    add_user_commands(commands)
    return commands.parser


__all__ = ["USER_COMMANDS", "Commands", "Handler", "add_user_commands", "build_parser", "positive"]
