"""``taskbus``, the installed script: the launcher's commands (``up``, ``server``,
``executor``, ``scheduler``, ``console``) and every user command of ``sdk.cli``.

The launcher's modules are imported when their command runs: ``taskbus --help`` and ``taskbus
tasks`` load neither nats-server supervision, nor the console, nor Textual.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from broker import names
from sdk.cli import dispatch
from sdk.cli.parser import Commands, add_user_commands, positive

WEB_PORT = 8000


def _up(args: argparse.Namespace) -> int:
    from console.launch.stack import up

    return up(args)


def _server(args: argparse.Namespace) -> int:
    from console.launch.stack import server

    return server(args)


def _executor(args: argparse.Namespace) -> int:
    from console.launch.daemons import executor

    return executor(args)


def _scheduler(args: argparse.Namespace) -> int:
    from console.launch.daemons import scheduler

    return scheduler(args)


def _console(args: argparse.Namespace) -> int:
    from console.launch.daemons import console

    return console(args)


def add_web_options(parser: argparse.ArgumentParser) -> None:
    """``--web --host --port``: ``taskbus console`` and ``python -m console`` alike."""
    parser.add_argument("--web", action="store_true", help="serve it in a browser instead")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="with --web: address to bind (default 127.0.0.1; requests need the token in the "
        "printed URL, which travels in clear: beyond localhost, put TLS in front)",
    )
    parser.add_argument(
        "--port", type=int, default=WEB_PORT, help=f"with --web: port (default {WEB_PORT})"
    )


def add_launcher_commands(commands: Commands) -> None:
    p = commands.add(
        "up",
        _up,
        "start the embedded stack: nats-server, scheduler, one executor and the console",
        connects=False,
    )
    p.add_argument("--port", type=int, default=names.DEFAULT_PORT, help="port (default 4222)")
    p.add_argument("--data-dir", help="where the server keeps its data (default: per user)")
    p.add_argument("--no-console", action="store_true", help="print run events instead")
    p.add_argument("--slots", type=positive, default=4, help="runs at once (default 4)")

    p = commands.add(
        "server",
        _server,
        "start the embedded nats-server with JetStream alone, resources provisioned",
        connects=False,
    )
    p.add_argument("--port", type=int, default=names.DEFAULT_PORT, help="port (default 4222)")
    p.add_argument("--data-dir", help="where the server keeps its data (default: per user)")

    p = commands.add("executor", _executor, "run one executor daemon")
    p.add_argument("--slots", type=positive, help="runs at once")
    p.add_argument("--pool", help=f"the pool to take runs from (default {names.DEFAULT_POOL})")
    p.add_argument("--work-dir", help="where runs are unpacked and environments cached")
    p.set_defaults(passthrough=True)
    p.epilog = "Every option of `python -m executor --help` is accepted too (e.g. --ack-wait)."

    p = commands.add("scheduler", _scheduler, "run the cron scheduler daemon")
    p.set_defaults(passthrough=True)
    p.epilog = "Every option of `python -m broker.scheduler --help` is accepted too."

    p = commands.add("console", _console, "open the live console")
    add_web_options(p)


def build_parser() -> argparse.ArgumentParser:
    commands = Commands()
    add_launcher_commands(commands)
    add_user_commands(commands)
    return commands.parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
