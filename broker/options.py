"""The connection options every Taskbus command and daemon takes, with one name and one help
text each: ``taskbus …``, ``python -m sdk.cli``, ``python -m executor``, ``python -m
broker.scheduler`` and ``python -m console``. ``ConnectSettings.from_args`` reads them back;
the environment (``TASKBUS_URL``, ``TASKBUS_USER``, …) fills what is not given.

Only argparse and ``broker.names`` are imported here, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker import names

GROUP_TITLE = "connection"


def add_connection_options(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """Add ``--url --user --password --token --creds --tls-ca`` as the "connection" group. A
    subcommand's parent parser passes ``default=argparse.SUPPRESS``, so a value given before
    the command name is kept."""
    group = parser.add_argument_group(GROUP_TITLE)
    group.add_argument(
        "--url",
        default=default,
        help=f"NATS server URL(s), comma separated (default: ${names.ENV_URL}, "
        f"else {names.DEFAULT_URL})",
    )
    group.add_argument("--user", default=default, help=f"user name (or ${names.ENV_USER})")
    group.add_argument("--password", default=default, help=f"password (or ${names.ENV_PASSWORD})")
    group.add_argument("--token", default=default, help=f"auth token (or ${names.ENV_TOKEN})")
    group.add_argument(
        "--creds",
        default=default,
        help=f"NATS .creds file (or ${names.ENV_CREDS}; on this machine, the user.creds "
        f"`taskbus up` wrote is found by itself)",
    )
    group.add_argument(
        "--tls-ca",
        default=default,
        help=f"CA file that signed the servers' TLS certificates, for tls:// URLs "
        f"(or ${names.ENV_TLS_CA})",
    )
