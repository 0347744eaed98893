"""The ``taskbus`` argument parser: daemons (up, server, executor, scheduler, console) and user
commands over the SDK. Connection options work before or after the command name."""

from __future__ import annotations

import argparse
from typing import Any

from broker import names


def _connection(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default,
        help=f"NATS server URL(s), comma separated (default: ${names.ENV_URL}, "
        f"else {names.DEFAULT_URL})",
    )
    group.add_argument("--user", default=default, help=f"user name (or ${names.ENV_USER})")
    group.add_argument("--password", default=default, help=f"password (or ${names.ENV_PASSWORD})")
    group.add_argument("--token", default=default, help=f"auth token (or ${names.ENV_TOKEN})")
    group.add_argument("--creds", default=default, help=f"NATS .creds file (or ${names.ENV_CREDS})")


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _workspace(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--workspace", help=help_)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    from sdk.cli import commands, daemons, stack
    from sdk.cli import workspaces as workspace_commands

    parser = argparse.ArgumentParser(
        prog="taskbus",
        description="Run ML workload orchestrations over NATS JetStream.",
        epilog="Exit codes: 0 ok, 1 the work failed, 2 usage or bad input, 3 not connected.",
    )
    _connection(parser, None)
    # Subcommands take the same options; SUPPRESS keeps a value given before the command.
    conn = argparse.ArgumentParser(add_help=False)
    _connection(conn, argparse.SUPPRESS)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Any, help_: str, *, connects: bool = True) -> Any:
        p = sub.add_parser(name, help=help_, description=help_, parents=[conn] if connects else [])
        p.set_defaults(handler=handler)
        return p

    # --- daemons ---
    p = command(
        "up",
        stack.up,
        "start the embedded stack: nats-server, scheduler, one executor and the console",
        connects=False,
    )
    p.add_argument("--port", type=int, default=names.DEFAULT_PORT, help="port (default 4222)")
    p.add_argument("--data-dir", help="where the server keeps its data (default: per user)")
    p.add_argument("--no-console", action="store_true", help="print run events instead")
    p.add_argument("--slots", type=_positive, default=4, help="runs at once (default 4)")

    p = command(
        "server",
        stack.server,
        "start the embedded nats-server with JetStream alone, resources provisioned",
        connects=False,
    )
    p.add_argument("--port", type=int, default=names.DEFAULT_PORT, help="port (default 4222)")
    p.add_argument("--data-dir", help="where the server keeps its data (default: per user)")

    p = command("executor", daemons.executor, "run one executor daemon")
    p.add_argument("--slots", type=_positive, help="runs at once")
    p.add_argument("--pool", help=f"the pool to take runs from (default {names.DEFAULT_POOL})")
    p.add_argument("--work-dir", help="where runs are unpacked and environments cached")
    p.set_defaults(passthrough=True)
    p.epilog = "Every option of `python -m executor --help` is accepted too (e.g. --ack-wait)."

    p = command("scheduler", daemons.scheduler, "run the cron scheduler daemon")
    p.set_defaults(passthrough=True)
    p.epilog = "Every option of `python -m broker.scheduler --help` is accepted too."

    p = command("console", daemons.console, "open the live console")
    p.add_argument("--web", action="store_true", help="serve it in a browser instead")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="with --web: address to bind (default 127.0.0.1; the web console has no "
        "authentication of its own: keep it on localhost or behind an authenticating proxy)",
    )
    p.add_argument("--port", type=int, default=8000, help="with --web: port (default 8000)")

    # --- user commands ---
    p = command("upload", commands.upload, "upload an orchestration zip")
    p.add_argument("path", help="the zip file")
    p.add_argument("--name", help="the orchestration's name (default: the file name)")
    p.add_argument("--wait", action="store_true", help="wait until it is packaged")
    p.add_argument("--timeout", type=float, help="seconds to wait with --wait")
    _workspace(p, "upload into this workspace (default: default)")
    _json(p)

    p = command("orchestrations", commands.orchestrations, "list orchestrations, oldest first")
    _workspace(p, "only this workspace")
    _json(p)

    p = command("run", commands.run, "run an orchestration once (or continuously)")
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
    _workspace(p, "the orchestration's workspace (its tasks run there)")
    _json(p)

    p = command("schedule", commands.schedule, "run an orchestration on a cron schedule")
    p.add_argument("orchestration", metavar="ORCH", help="orchestration id or name")
    p.add_argument("--name", required=True, help="the task's name")
    p.add_argument("--cron", required=True, help="cron schedule, e.g. '*/5 * * * *'")
    p.add_argument("--tz", default="UTC", help="IANA time zone (default UTC)")
    p.add_argument("--overlap", default="allow", help="allow (default), forbid or replace")
    p.add_argument("--missed", default="latest", help="latest (default), skip or all")
    p.add_argument("--args", help="json_args: a JSON object, or @file holding one")
    p.add_argument("--timeout", type=int, help="seconds each run may take")
    _workspace(p, "the orchestration's workspace (its tasks run there)")
    _json(p)

    p = command("tasks", commands.tasks, "list tasks, newest change first")
    p.add_argument("--killed", action="store_true", help="only killed tasks")
    _workspace(p, "only this workspace")
    _json(p)

    p = command("runs", commands.runs, "list a task's runs, newest first")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--status", default="all", help="all (default), pending, running, …")
    p.add_argument("--limit", type=int, help="at most this many")
    _workspace(p, "the task's workspace (refused if it is elsewhere)")
    _json(p)

    p = command("logs", commands.logs, "print a run's logs (the task's newest run by default)")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("run_id", metavar="RUN_ID", nargs="?", help="a run of the task")
    p.add_argument("--follow", "-f", action="store_true", help="then live lines until it ends")
    p.add_argument("--limit", type=int, help="only the last N lines")
    _workspace(p, "the task's workspace (refused if it is elsewhere)")
    _json(p)

    for name, handler, text in (
        ("kill", commands.kill, "kill a task: no more runs, the running one stopped"),
        ("pause", commands.pause, "pause a scheduled or continuous task"),
        ("resume", commands.resume, "resume a paused task"),
    ):
        p = command(name, handler, text)
        p.add_argument("task_id", metavar="TASK_ID")
        _workspace(p, "the task's workspace (refused if it is elsewhere)")
        _json(p)
    workspace_commands.register(command)  # workspaces, connections
    return parser


def connect_settings(args: argparse.Namespace, name: str = "taskbus-cli") -> Any:
    """The ``ConnectSettings`` the options describe (the environment fills the gaps)."""
    from broker.settings import ConnectSettings

    return ConnectSettings.from_env(
        getattr(args, "url", None),
        user=getattr(args, "user", None),
        password=getattr(args, "password", None),
        token=getattr(args, "token", None),
        creds_file=getattr(args, "creds", None),
        name=name,
    )
