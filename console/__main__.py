"""``python -m console --url URL [--web] [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import logging

from broker.errors import TaskbusError
from broker.settings import ConnectSettings
from console import run_console


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m console", description="The Taskbus console (a full-screen terminal UI)."
    )
    parser.add_argument(
        "--url", default=None, help="NATS URL(s), comma-separated (default: TASKBUS_URL)"
    )
    parser.add_argument("--web", action="store_true", help="serve it in a browser instead")
    parser.add_argument("--host", default="127.0.0.1", help="with --web: address to bind")
    parser.add_argument("--port", type=int, default=8000, help="with --web: port to bind")
    args = parser.parse_args(argv)
    # The terminal belongs to the UI: library logs would tear it, so only errors, to stderr.
    logging.basicConfig(level=logging.ERROR if not args.web else logging.INFO)
    try:
        settings = ConnectSettings.from_env(url=args.url)
    except ValueError as exc:  # a bad TASKBUS_* variable: a usage error, not a traceback
        parser.error(str(exc))
    try:
        run_console(settings, web=args.web, host=args.host, port=args.port)
    except TaskbusError as exc:  # e.g. --web on a port in use: one line, the usage code
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
