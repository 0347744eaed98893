"""``taskbus workspaces`` and ``taskbus connections``: thin calls into ``sdk.Client``.

Connection details are read from a JSON file or stdin (``--details -``), never from the
command line (where ``ps`` and shell history would keep them), and printed masked unless
``--show-secrets`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.settings import ConnectSettings
from sdk.cli import OK

if TYPE_CHECKING:
    from sdk.client import Client
    from sdk.connection import Connection

Command = Callable[..., argparse.ArgumentParser]


def register(command: Command) -> None:
    """Add the two commands to ``taskbus`` (``command`` is the parser's own helper)."""
    p = command("workspaces", workspaces, "list workspaces, or create one")
    p.add_argument("action", nargs="?", choices=("list", "create"), default="list")
    p.add_argument("name", nargs="?", help="with create: the new workspace's name")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = command(
        "connections",
        connections,
        "list data connections (values masked), create or delete one",
    )
    p.add_argument("action", nargs="?", choices=("list", "create", "delete"), default="list")
    p.add_argument("name", nargs="?", help="with create/delete: the connection's name")
    p.add_argument("--type", dest="connection_type", help="with create: e.g. postgres, s3")
    p.add_argument(
        "--details",
        metavar="FILE",
        help="with create: a JSON object in FILE, or '-' for stdin (never on the command line)",
    )
    p.add_argument(
        "--show-secrets", action="store_true", help="print detail values in clear (list)"
    )
    p.add_argument(
        "--workspace",
        help="create: in this workspace (default: default); list: only those added to it",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def open_client(args: argparse.Namespace) -> Client:
    """A client whose current workspace is ``--workspace`` (which must exist)."""
    from sdk.client import Client

    client = Client(settings=ConnectSettings.from_args(args, name="taskbus-cli"))
    name = getattr(args, "workspace", None)
    if name:
        try:
            client.set_current_workspace(client.get_workspace(name))
        except BaseException:
            client.close()
            raise
    return client


def _emit(args: argparse.Namespace, shown: Any, data: Any) -> None:
    print(json.dumps(data, indent=2) if args.json else shown)


def _need(value: str | None, what: str) -> str:
    if not value:
        raise ValueError(f"{what} is required here (see --help)")
    return value


def workspaces(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        if args.action == "create":
            made = client.create_workspace(_need(args.name, "NAME"))
            _emit(args, made, made.to_dict())
            return OK
        if args.name:
            raise ValueError("`taskbus workspaces` lists them all; it takes no NAME")
        found = client.list_workspaces()
        _emit(args, found, [w.to_dict() for w in found])
    return OK


def _read_details(source: str | None) -> Any:
    where = _need(source, "--details FILE (or - for stdin)")
    try:
        text = sys.stdin.read() if where == "-" else Path(where).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--details {where}: cannot read the file ({exc.strerror})") from None
    try:
        details = json.loads(text)
    except json.JSONDecodeError as exc:
        details = exc
    if not isinstance(details, dict):
        why = (
            f"is not valid JSON ({details})"
            if isinstance(details, Exception)
            else (f"holds a {type(details).__name__}")
        )
        raise ValueError(
            f"--details {where} {why}: details must be a dict (a JSON object such as "
            f'{{"host": "db", "password": "..."}})'
        )
    return details


def _shown(connection: Connection, show_secrets: bool) -> dict[str, Any]:
    data = connection.to_dict()
    if show_secrets:
        data["details"] = connection.details()
    return data


def connections(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        if args.action == "create":
            made = client.create_connection(
                _need(args.name, "NAME"),
                _need(args.connection_type, "--type"),
                _read_details(args.details),
            )
            _emit(args, made, made.to_dict())
            return OK
        if args.action == "delete":
            client.get_connection(_need(args.name, "NAME")).delete_connection()
            print(json.dumps({"deleted": args.name}) if args.json else f"deleted {args.name}")
            return OK
        if args.workspace:
            found = client.get_current_workspace().list_connections()
        else:
            found = client.list_connections()
        if args.name:
            found = type(found)(c for c in found if c.name() == args.name)
        if args.json:
            print(json.dumps([_shown(c, args.show_secrets) for c in found], indent=2))
        elif args.show_secrets:
            for c in found:
                print(f"{c.name()} ({c.connection_type()}): {json.dumps(c.details())}")
        else:
            print(found)
    return OK
