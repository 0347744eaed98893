"""``taskbus auth init|user`` and ``taskbus provision``: an admin's set-up of a cluster.

``auth init`` writes the authority (keys, JWTs, the server config to include, TLS material with
``--tls``); ``auth user`` issues one ``.creds`` file per identity; ``provision`` creates or
updates every stream and bucket with the admin credential. Nothing here needs a server except
``provision``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sdk.cli import OK, USAGE, error

if TYPE_CHECKING:
    from sdk.cli.parser import Commands

DAY_S = 86400.0


def _authority_dir(args: argparse.Namespace) -> Path:
    from broker import names
    from broker.settings import default_data_dir

    if args.dir:
        return Path(args.dir).expanduser()
    return default_data_dir() / names.AUTH_DIR


def register(commands: Commands) -> None:
    """``taskbus auth init|user`` and ``taskbus provision``."""
    auth = commands.add(
        "auth",
        _usage,
        "create the cluster's keys and issue credentials (admin)",
        connects=False,
    )
    auth.description = (
        "Create the cluster's operator, accounts and role keys, and issue credentials. Keep "
        "the directory private: it holds the keys that sign everything."
    )
    auth.set_defaults(auth_parser=auth)
    actions = auth.add_subparsers(title="actions", metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir", help="the authority's directory (default: <data dir>/auth, as `taskbus up`)"
    )

    init = actions.add_parser(
        "init",
        parents=[where],
        help="create the operator, accounts, role signing keys and a server config",
        description="Create the authority: an operator, the SYS and TASKBUS accounts, a scoped "
        "signing key per role, server.conf for nats-server (-c, or `include` it), one .creds "
        "file per role, the connections' encryption key, and with --tls a CA and a server "
        "certificate.",
    )
    init.add_argument(
        "--tls",
        metavar="HOSTS",
        help="also make TLS material for these server host names (comma separated)",
    )
    init.set_defaults(handler=init_authority)

    user = actions.add_parser(
        "user",
        parents=[where],
        help="issue a .creds file for one identity",
        description="Issue a credential. Roles: user (SDK/CLI), operator (console), executor, "
        "scheduler, admin. Executors also need the run signing key (signing/run.nk).",
    )
    user.add_argument("name", help="who it is for (one word: letters, digits, - or _)")
    user.add_argument(
        "--role", required=True, choices=["user", "operator", "executor", "scheduler", "admin"]
    )
    user.add_argument(
        "--workspace",
        action="append",
        default=[],
        help="a workspace a user or operator is granted (repeat for several)",
    )
    user.add_argument(
        "--all-workspaces",
        action="store_true",
        help="grant a user or operator every workspace, present and future (and creating them)",
    )
    user.add_argument("--out", help="where to write it (default: <dir>/creds/NAME.creds)")
    user.add_argument("--days", type=float, help="expires after this many days (default: never)")
    user.set_defaults(handler=issue_user)

    commands.add(
        "provision",
        provision,
        "create or update every stream and bucket (an admin credential; `taskbus up` and "
        "`taskbus server` do it themselves)",
    )


def _usage(args: argparse.Namespace) -> int:
    args.auth_parser.print_help()
    return USAGE


def init_authority(args: argparse.Namespace) -> int:
    from broker.authority import Authority
    from broker.tls import make_tls

    root = _authority_dir(args)
    if Authority(root).exists():
        error(
            f"{root} already holds an authority; issue credentials with `taskbus auth user`, "
            f"or choose another --dir"
        )
        return USAGE
    authority = Authority(root).ensure_local()
    print(f"authority created in {root}")
    print(f"  server config: {authority.server_config}  (nats-server -c it, or include it)")
    print(f"  credentials:   {root / 'creds'}/<role>.creds  (admin, scheduler, executor, ...)")
    print(f"  run signing key for executors: {authority.run_signing_key}")
    if args.tls:
        hosts = [h.strip() for h in args.tls.split(",") if h.strip()]
        files = make_tls(root / "tls", hosts)
        print(f"  TLS: CA {files['ca']}, certificate {files['cert']}, key {files['key']}")
    return OK


def issue_user(args: argparse.Namespace) -> int:
    from broker.authority import ALL_WORKSPACES, Authority
    from broker.roles import Role

    authority = Authority(_authority_dir(args))
    expires_at = time.time() + args.days * DAY_S if args.days else None
    if args.all_workspaces and args.workspace:
        error("give --workspace W (repeated) or --all-workspaces, not both")
        return USAGE
    path = authority.issue(
        args.name,
        Role(args.role),
        workspaces=[ALL_WORKSPACES] if args.all_workspaces else args.workspace,
        expires_at=expires_at,
        path=Path(args.out).expanduser() if args.out else None,
    )
    print(path)
    return OK


def provision(args: argparse.Namespace) -> int:
    """Create or update every stream and bucket, migrating an older store (an admin
    credential)."""
    import asyncio

    from broker.connection import connect
    from broker.settings import ConnectSettings

    settings = ConnectSettings.from_args(args, name="taskbus-provision", local_role="admin")

    async def once() -> None:
        bus = await connect(settings)  # an admin credential provisions as it connects
        try:
            bus.require_role("provision streams and buckets")
        finally:
            await bus.close()

    asyncio.run(once())
    print(f"provisioned {','.join(settings.urls)} (replicas {settings.replicas})")
    return OK
