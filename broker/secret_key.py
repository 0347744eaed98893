"""The key that encrypts connection details at rest (the bus never holds it): ``cryptography``'s
Fernet (AES-128-CBC with an HMAC-SHA256, authenticated), never a home-made cipher.

The key lives with whoever creates connections and at executors — ``TASKBUS_SECRET_KEY`` (a
Fernet key), else ``<data dir>/auth/secret.key`` (0600, made by ``Authority.ensure_local()``)
— and never on the bus: the bus stores only tokens.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken

from broker import names
from broker.errors import SecretKeyError

if TYPE_CHECKING:
    from broker.models import ConnectionRecord


def default_key_file() -> Path:
    from broker.settings import default_data_dir

    return default_data_dir() / names.AUTH_DIR / names.SECRET_KEY_FILE


def new_key_text() -> str:
    return Fernet.generate_key().decode()


@dataclass(frozen=True)
class SecretKey:
    """A loaded Fernet key and where it came from (named in errors)."""

    fernet: Fernet
    source: str

    @classmethod
    def from_text(cls, text: str, source: str) -> SecretKey:
        try:
            return cls(Fernet(text.strip().encode()), source)
        except (ValueError, TypeError):
            raise SecretKeyError(
                f"{source} is not a Taskbus secret key (a Fernet key: 32 url-safe base64 "
                f"bytes); `taskbus up` makes one in {default_key_file()}"
            ) from None

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> SecretKey:
        """``TASKBUS_SECRET_KEY``, else the key file; ``SecretKeyError`` saying where to put
        one when there is neither."""
        env = os.environ if environ is None else environ
        text = env.get(names.ENV_SECRET_KEY)
        if text:
            return cls.from_text(text, f"${names.ENV_SECRET_KEY}")
        path = default_key_file()
        try:
            return cls.from_text(path.read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            raise SecretKeyError(
                f"no secret key to encrypt or decrypt connection details: set "
                f"${names.ENV_SECRET_KEY} to the cluster's key, or put it in {path} "
                f"(`taskbus up` creates one there)"
            ) from None
        except OSError as exc:
            raise SecretKeyError(f"cannot read the secret key {path}: {exc.strerror}") from None

    def seal(self, details: dict[str, Any], *, name: str, workspace: str) -> str:
        """Encrypt ``details`` for connection ``name`` in ``workspace`` only: the pair is
        inside the token, so a copy moved under another key (another workspace or name) by
        someone without this key does not open there."""
        sealed = _Sealed(name=name, workspace=workspace, details=details)
        return self.fernet.encrypt(msgspec.json.encode(sealed)).decode()

    def open(self, token: str, *, name: str, workspaces: Collection[str]) -> dict[str, Any]:
        """The details of a token sealed for connection ``name`` in one of ``workspaces``."""
        try:
            data = self.fernet.decrypt(token.encode())
        except InvalidToken:
            raise SecretKeyError(
                f"the secret key from {self.source} does not decrypt these connection details: "
                f"it is not the key they were stored with"
            ) from None
        try:
            sealed = msgspec.json.decode(data, type=_Sealed)
        except msgspec.DecodeError:
            raise SecretKeyError("these connection details are not a Taskbus token") from None
        if sealed.name != name or sealed.workspace not in workspaces:
            raise SecretKeyError(
                f"these details were sealed for connection {sealed.name!r} of workspace "
                f"{sealed.workspace!r}, not for {name!r} in {', '.join(workspaces)}: refused "
                f"(a record copied to another key)"
            )
        return sealed.details

    def open_each(self, records: Iterable[ConnectionRecord]) -> Iterator[dict[str, Any]]:
        """The details of each record this key opens (the others skipped)."""
        for record in records:
            try:
                yield self.open(
                    record.details_token, name=record.name, workspaces=record.workspaces
                )
            except SecretKeyError:
                continue


class _Sealed(msgspec.Struct, frozen=True, kw_only=True):
    """What a details token holds: the details and the one place they belong."""

    name: str
    workspace: str
    details: dict[str, Any]
