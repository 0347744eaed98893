"""The cluster's identities: one operator, a ``SYS`` and a ``TASKBUS`` account, a scoped signing
key per role, and the ``.creds`` files issued with them (NATS's own decentralised JWT auth:
no home-made crypto, no shared credential).

Everything lives in one directory (``<data dir>/auth`` for ``taskbus up``), every file 0600:

    operator.nk account.nk system.nk     seeds: only ``taskbus auth`` needs them
    signing/<role>.nk                     a role's scoped signing key (executors get run.nk)
    operator.jwt account.jwt system.jwt   what nats-server trusts (server.conf preloads them)
    server.conf                           include it in nats-server's config (-c)
    creds/<name>.creds                    one per issued identity
    secret.key                            the Fernet key of connection details (never on
                                          the bus: for executors and connection writers)

A user JWT carries no permissions of its own: it is signed by its role's scoped key, whose
template (``broker.roles``) the server applies, with the user's tags (``role:``, ``task:``,
``run:``, ``orchestration:``, ``workspace:``) filling the template's holes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from broker import names, tokens
from broker.errors import CredentialError
from broker.roles import ISSUABLE, Role, template

log = logging.getLogger(__name__)

ACCOUNT_NAME = "TASKBUS"
SYSTEM_NAME = "SYS"
OPERATOR_NAME = "taskbus"
# JetStream on, no other account limits: the cluster is Taskbus's alone.
_ACCOUNT_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
    "max_ack_pending": -1,
}
_SYSTEM_LIMITS = {
    key: _ACCOUNT_LIMITS[key]
    for key in ("subs", "data", "payload", "imports", "exports", "wildcards", "conn", "leaf")
}


def write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)


def _user_claims(
    name: str, user: nkeys.KeyPair, account: str, tags: Iterable[str], expires_at: float | None
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": tokens.public(user),
        "name": name,
        "nats": {
            "type": "user",
            "version": 2,
            "issuer_account": account,
            "tags": sorted(set(tags)),
        },  # no permissions or limits: a scoped key's user gets its role's template
    }
    if expires_at is not None:
        claims["exp"] = int(expires_at)
    return claims


# Users and operators are granted workspaces; ``*`` grants every one (the server's template
# then matches any workspace token: ``broker.roles``).
WORKSPACE_ROLES = (Role.USER, Role.OPERATOR)
ALL_WORKSPACES = "*"


def _workspace_tag(name: str) -> str:
    if name == ALL_WORKSPACES:
        return name
    if not re.fullmatch(names.NAME_PATTERN, name):
        raise CredentialError(
            f"{name!r} is not a workspace name (1-64 letters, digits, '-' or '_', starting "
            f"with a letter or digit)"
        )
    return name


def _check_token(kind: str, value: str) -> str:
    """Tag values end up inside subjects: one token, no wildcards, no spaces."""
    if not value or any(c in value for c in ".*> \t\r\n") or not value.isprintable():
        raise CredentialError(f"{kind} {value!r} cannot be used in a credential")
    return value


@dataclass(frozen=True)
class RunSigner:
    """What an executor holds to give each run its own credential: the run role's scoped
    signing key and the account it signs for — never the account key itself."""

    key: nkeys.KeyPair
    account: str

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunSigner:
        """From a ``run.nk`` file: its seed on the first line, the account's key on the next."""
        try:
            lines = Path(path).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise CredentialError(
                f"cannot read the run signing key {os.fspath(path)!r}: {exc.strerror}"
            ) from None
        if len(lines) < 2:
            raise CredentialError(f"{os.fspath(path)!r} is not a Taskbus run signing key")
        return cls(tokens.key_from_seed(lines[0]), lines[1])

    def mint(
        self,
        *,
        task_id: str,
        run_id: str,
        orchestration_id: str,
        workspace: str = "",
        expires_at: float,
    ) -> str:
        """A ``.creds`` text valid for this run only, until ``expires_at`` (epoch seconds)."""
        user = tokens.new_key(tokens.USER)
        tags = [
            f"role:{Role.RUN}",
            f"task:{_check_token('task id', task_id)}",
            f"run:{_check_token('run id', run_id)}",
            f"orchestration:{_check_token('orchestration id', orchestration_id)}",
        ]
        if workspace:
            tags.append(f"workspace:{_check_token('workspace', workspace)}")
        claims = _user_claims(f"run {task_id}.{run_id}", user, self.account, tags, expires_at)
        return tokens.creds_text(tokens.sign(claims, self.key), user)


class Authority:
    """The operator's material in one directory; ``init`` creates it, ``load`` reads it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- files -----------------------------------------------------------------------------
    @property
    def server_config(self) -> Path:
        return self.root / "server.conf"

    @property
    def run_signing_key(self) -> Path:
        return self.root / "signing" / "run.nk"

    @property
    def secret_key(self) -> Path:
        return self.root / names.SECRET_KEY_FILE

    def creds_path(self, name: str) -> Path:
        return self.root / "creds" / f"{name}.creds"

    def exists(self) -> bool:
        return self.server_config.is_file() and (self.root / "account.nk").is_file()

    def _seed(self, name: str) -> nkeys.KeyPair:
        path = self.root / name
        try:
            return tokens.key_from_seed(path.read_text(encoding="utf-8").split()[0])
        except (OSError, IndexError):
            raise CredentialError(
                f"{path} is missing or empty: this directory holds no Taskbus authority "
                f"(create one with `taskbus auth init --dir {self.root}`)"
            ) from None

    # --- creating --------------------------------------------------------------------------
    def init(self) -> Authority:
        """Create every key, JWT and the server config; refuses to overwrite existing ones."""
        if self.exists():
            raise CredentialError(
                f"{self.root} already holds an authority; issue credentials with "
                f"`taskbus auth user`, or choose another --dir"
            )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        operator = tokens.new_key(tokens.OPERATOR)
        account = tokens.new_key(tokens.ACCOUNT)
        system = tokens.new_key(tokens.ACCOUNT)
        seeds = (("operator.nk", operator), ("account.nk", account), ("system.nk", system))
        for name, key in seeds:
            write_private(self.root / name, tokens.seed(key) + "\n")
        scopes = []
        for role in Role:
            signer = tokens.new_key(tokens.ACCOUNT)
            seed_text = f"{tokens.seed(signer)}\n{tokens.public(account)}\n"
            write_private(self.root / "signing" / f"{role}.nk", seed_text)
            scopes.append(
                {
                    "kind": "user_scope",
                    "key": tokens.public(signer),
                    "role": str(role),
                    "template": template(role),
                    "description": f"Taskbus {role} role",
                }
            )
        operator_jwt = tokens.sign(
            {
                "sub": tokens.public(operator),
                "name": OPERATOR_NAME,
                "nats": {
                    "type": "operator",
                    "version": 2,
                    "system_account": tokens.public(system),
                },
            },
            operator,
        )
        account_jwt = tokens.sign(
            {
                "sub": tokens.public(account),
                "name": ACCOUNT_NAME,
                "nats": {
                    "type": "account",
                    "version": 2,
                    "limits": _ACCOUNT_LIMITS,
                    "signing_keys": scopes,
                    "default_permissions": {"pub": {}, "sub": {}},
                },
            },
            operator,
        )
        system_jwt = tokens.sign(
            {
                "sub": tokens.public(system),
                "name": SYSTEM_NAME,
                "nats": {"type": "account", "version": 2, "limits": _SYSTEM_LIMITS},
            },
            operator,
        )
        for name, jwt in (
            ("operator.jwt", operator_jwt),
            ("account.jwt", account_jwt),
            ("system.jwt", system_jwt),
        ):
            write_private(self.root / name, jwt + "\n")
        write_private(
            self.server_config,
            "# Taskbus operator-mode authentication (written by `taskbus auth init`).\n"
            f"operator: {_quote(operator_jwt)}\n"
            f"system_account: {tokens.public(system)}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {tokens.public(account)}: {_quote(account_jwt)}\n"
            f"  {tokens.public(system)}: {_quote(system_jwt)}\n"
            "}\n",
        )
        log.info("created the Taskbus authority in %s", self.root)
        return self

    def issue(
        self,
        name: str,
        role: Role,
        *,
        workspaces: Iterable[str] = (),
        expires_at: float | None = None,
        path: Path | None = None,
    ) -> Path:
        """Write a ``.creds`` file for ``name`` with ``role``; returns its path. A user or an
        operator is granted ``workspaces`` (``ALL_WORKSPACES``: every one, now and later) and
        must be granted at least one; the other roles serve every workspace."""
        if role not in ISSUABLE:
            raise CredentialError(
                f"role {role!r} is not issued by hand (run credentials are minted per run)"
            )
        _check_token("name", name)
        workspaces = list(workspaces)
        if role in WORKSPACE_ROLES and not workspaces:
            raise CredentialError(
                f"a {role} credential is for some workspaces: name them (--workspace W, "
                f"repeated) or grant every one (--all-workspaces)"
            )
        if role not in WORKSPACE_ROLES and workspaces:
            raise CredentialError(
                f"a {role} credential serves every workspace: it takes no --workspace"
            )
        signer = self._seed(f"signing/{role}.nk")
        account = tokens.public(self._seed("account.nk"))
        user = tokens.new_key(tokens.USER)
        tags = [f"role:{role}", *(f"workspace:{_workspace_tag(w)}" for w in workspaces)]
        claims = _user_claims(name, user, account, tags, expires_at)
        target = path or self.creds_path(name)
        write_private(target, tokens.creds_text(tokens.sign(claims, signer), user))
        return target

    def account_key(self) -> str:
        """The TASKBUS account's public key: the folder its JetStream data lives in."""
        return tokens.public(self._seed("account.nk"))

    def adopt_store(self, store_dir: Path) -> bool:
        """Move a store made without authentication (the global account ``$G``) to the
        TASKBUS account, so an old data directory opens with everything in it. The server
        must be stopped; True when something was moved."""
        old = store_dir / "jetstream" / "$G"
        new = store_dir / "jetstream" / self.account_key()
        if not old.is_dir() or new.exists():
            return False
        old.rename(new)
        log.info("moved the store of %s from the global account to TASKBUS", store_dir)
        return True

    def run_signer(self) -> RunSigner:
        return RunSigner.load(self.run_signing_key)

    def ensure_local(self) -> Authority:
        """``taskbus up``'s set-up: the authority and one credential per role, made once."""
        if not self.exists():
            self.init()
        for role in ISSUABLE:
            path = self.creds_path(str(role))
            # A user or operator credential written before workspaces scoped them would now
            # reach none: the machine's owner gets every workspace, as before.
            if not path.is_file() or (
                role in WORKSPACE_ROLES and tokens.read_creds(path).tag("workspace") is None
            ):
                grant = [ALL_WORKSPACES] if role in WORKSPACE_ROLES else []
                self.issue(str(role), role, workspaces=grant)
        if not self.secret_key.is_file():
            from broker.secret_key import new_key_text

            write_private(self.secret_key, new_key_text() + "\n")
        return self


def _quote(text: str) -> str:
    return f'"{text}"'
