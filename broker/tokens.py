"""NATS decentralized-auth material: nkeys, signed JWTs and ``.creds`` files.

Keys and signatures come from ``nkeys`` (ed25519, NATS's own encoding). A JWT here is what
nats-server's operator mode reads: ``base64url(header).base64url(claims).base64url(sig)``,
signed with the issuer's nkey. ``nats-jwt`` on PyPI models the same claims but has no type for
scoped signing keys (the heart of our roles), so the claims are plain dicts built by
``broker.authority``; only the envelope lives here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nkeys

from broker.errors import CredentialError

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_CREDS_JWT = "-----BEGIN NATS USER JWT-----"
_CREDS_SEED = "-----BEGIN USER NKEY SEED-----"

# nkeys' prefix bytes, by what a key identifies.
OPERATOR = nkeys.PREFIX_BYTE_OPERATOR
ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT
USER = nkeys.PREFIX_BYTE_USER


def new_key(prefix: int) -> nkeys.KeyPair:
    """A fresh ed25519 nkey of the given kind (``OPERATOR``, ``ACCOUNT``, ``USER``)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def key_from_seed(seed: bytes | str) -> nkeys.KeyPair:
    raw = seed.encode() if isinstance(seed, str) else seed
    try:
        return nkeys.from_seed(bytearray(raw.strip()))
    except Exception as exc:  # nkeys raises its own errors and binascii's
        raise CredentialError(f"not an nkey seed ({type(exc).__name__})") from None


def public(key: nkeys.KeyPair) -> str:
    value: bytes = key.public_key
    return value.decode()


def seed(key: nkeys.KeyPair) -> str:
    value: bytes = key.seed
    return value.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """Encode and sign ``claims`` (``sub``, ``name``, ``nats``, optional ``exp``) as a JWT
    issued by ``issuer``; ``iat``, ``iss`` and ``jti`` are filled in."""
    body = {**claims, "iat": int(time.time()), "iss": public(issuer)}
    body.pop("jti", None)
    body["jti"] = base64.b32encode(hashlib.sha256(msgspec.json.encode(body)).digest()).decode()
    payload = f"{_b64(msgspec.json.encode(_HEADER))}.{_b64(msgspec.json.encode(body))}"
    signature: bytes = issuer.sign(payload.encode())
    return f"{payload}.{_b64(signature)}"


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the server verifies; we only read our own)."""
    try:
        _, body, _ = token.split(".")
        claims: dict[str, Any] = msgspec.json.decode(_unb64(body))
    except (ValueError, msgspec.DecodeError):
        raise CredentialError("not a NATS JWT") from None
    return claims


def creds_text(jwt: str, user: nkeys.KeyPair) -> str:
    """A ``.creds`` file: the user's JWT and its seed, in the layout nats tools read."""
    return (
        f"{_CREDS_JWT}\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"{_CREDS_SEED}\n{seed(user)}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass(frozen=True)
class Creds:
    """What a ``.creds`` file says about its holder."""

    jwt: str
    public_key: str  # the user's nkey: also its private inbox prefix (see inbox_prefix)
    name: str
    tags: tuple[str, ...]
    expires_at: float | None

    def tag(self, name: str) -> str | None:
        prefix = f"{name}:"
        for tag in self.tags:
            if tag.startswith(prefix):
                return tag[len(prefix) :]
        return None

    @property
    def role(self) -> str | None:
        return self.tag("role")

    @property
    def inbox_prefix(self) -> str:
        """Replies to this user go under its own key: no other user may subscribe there."""
        return f"_INBOX.{self.public_key}"


def read_creds(path: str | os.PathLike[str]) -> Creds:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialError(
            f"cannot read the credential file {os.fspath(path)!r}: {exc.strerror}"
        ) from None
    return parse_creds(text, where=os.fspath(path))


def parse_creds(text: str, where: str = "the credential") -> Creds:
    lines = [line.strip() for line in text.splitlines()]
    try:
        jwt = lines[lines.index(_CREDS_JWT) + 1]
    except (ValueError, IndexError):
        raise CredentialError(f"{where} is not a NATS .creds file (no user JWT in it)") from None
    try:
        claims = claims_of(jwt)
    except CredentialError:
        raise CredentialError(
            f"{where} is not a NATS .creds file (its user JWT is not a JWT)"
        ) from None
    nats_claims = claims.get("nats") or {}
    exp = claims.get("exp")
    return Creds(
        jwt=jwt,
        public_key=str(claims.get("sub", "")),
        name=str(claims.get("name", "")),
        tags=tuple(str(tag) for tag in nats_claims.get("tags") or ()),
        expires_at=float(exp) if exp else None,
    )
