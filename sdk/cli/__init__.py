"""The ``taskbus`` user commands: parse, build settings, call the library.

``python -m sdk.cli`` runs them headless; the installed ``taskbus`` script is ``console.cli``,
which adds the launcher's commands (``up``, ``server``, …) to the same parser.

Exit codes scripts can trust (``broker.errors.ExitCode``, the daemons' too): 0 ok; 1 the work
failed (a task run that did not succeed, a packaging error, a daemon that could not start); 2
usage or bad input; 3 no server to talk to; 130 interrupted. Every Taskbus error is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from broker.errors import ExitCode

OK = ExitCode.OK
FAILED = ExitCode.FAILED
USAGE = ExitCode.USAGE
NOT_CONNECTED = ExitCode.NOT_CONNECTED
INTERRUPTED = ExitCode.INTERRUPTED


def error(message: object) -> None:
    """One line on stderr; names and other user text in ``message`` show escaped."""
    from broker.text import printable

    print(f"taskbus: error: {printable(str(message))}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from sdk.cli.parser import build_parser

    return dispatch(build_parser(), argv)


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command's handler, and turn every Taskbus error into one line
    on stderr and an exit code."""
    from broker.errors import TaskbusError, exit_status

    # As broker.service.quiet_asyncio (not imported: `--help` stays light): no TLS EOF noise.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # a daemon's own options (taskbus executor --ack-wait 60 ...)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return USAGE
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # `taskbus logs ... | head`
        sys.stderr.close()
        return OK
    except TaskbusError as exc:
        error(exc)
        return exit_status(exc)
    except (ValueError, TypeError) as exc:  # the library's checks of arguments
        error(exc)
        return USAGE
    except Exception as exc:
        nats_error = type(exc).__module__.startswith("nats")  # nats is not imported for --help
        if nats_error and "stream not found" in str(exc):
            error(
                "the server has no Taskbus streams yet: provision it once with the admin "
                "credential (`taskbus provision --creds …/admin.creds`; `taskbus up` and "
                "`taskbus server` do it themselves)"
            )
            return NOT_CONNECTED
        if nats_error:
            error(f"lost the connection to the server ({type(exc).__name__}: {exc})")
            return NOT_CONNECTED
        raise
