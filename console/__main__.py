"""``python -m console [--url URL] [--user U --password P | --token T | --creds FILE] [--web]``:
the console alone (``taskbus console`` takes the same options)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from broker.errors import TaskbusError
from broker.options import add_connection_options
from broker.settings import ConnectSettings
from console import run_console
from console.cli import add_web_options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m console", description="The Taskbus console (a full-screen terminal UI)."
    )
    add_connection_options(p)
    add_web_options(p)
    return p


def settings_from(argv: Sequence[str] | None = None) -> tuple[ConnectSettings, argparse.Namespace]:
    """The connection the command line (and the environment) describe, and the options."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        return ConnectSettings.from_args(args, name="taskbus-console"), args
    except ValueError as exc:  # a bad TASKBUS_* variable: a usage error, not a traceback
        cli.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = settings_from(argv)
    # The terminal belongs to the UI: library logs would tear it, so only errors, to stderr.
    logging.basicConfig(level=logging.ERROR if not args.web else logging.INFO)
    try:
        run_console(settings, web=args.web, host=args.host, port=args.port)
    except TaskbusError as exc:  # e.g. --web on a port in use: one line, the usage code
        parser().exit(2, f"python -m console: error: {exc}\n")


if __name__ == "__main__":
    main()
