"""Data connections (the reference's ``create_connection`` / ``get_connection``): named, typed
JSON details, encrypted with the operator's key (``broker.secret_key``) before they reach the
bus, and added to workspaces.

A connection has one record per workspace it is added to, keyed ``<workspace>.<name>`` in
``taskbus_connections`` (the workspace leads the subject, so server permissions can scope it);
every copy lists all the workspaces and carries the connection's ``id``. A name is unique among
the workspaces its creator can see; users of workspaces that cannot see each other may pick the
same name, and each is a connection of its own (one id): a credential that sees both means the
one of its current workspace (``prefer``), and changing or deleting one never touches the
other. Only broker code holds the key's results: ``details`` are decrypted here, and everything
shown to a person goes through ``masked``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from broker import names, scope, store
from broker.errors import (
    ConnectionNotFound,
    InvalidConnection,
    PermissionDenied,
    WrongArgumentType,
)
from broker.models import ConnectionRecord, utcnow
from broker.secret_key import SecretKey

if TYPE_CHECKING:
    from broker.connection import Bus

log = logging.getLogger(__name__)

_NAME = re.compile(names.NAME_PATTERN)


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise WrongArgumentType(
            f"A connection name must be a str, not {type(name).__name__}: {name!r}"
        )
    if not _NAME.fullmatch(name):
        raise InvalidConnection(
            f"{name!r} is not a valid connection name: use 1-64 letters, digits, '-' or '_', "
            f"starting with a letter or digit (e.g. 'warehouse-db')."
        )
    return name


def check_details(details: object) -> dict[str, Any]:
    """A JSON object under the size limit, or a clear error."""
    if not isinstance(details, dict):
        raise WrongArgumentType(
            f"details must be a dict (a JSON object such as {{'host': 'db', 'password': "
            f"'...'}}), not {type(details).__name__}"
        )
    try:
        text = json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidConnection(
            f"details must hold only JSON values (str, number, bool, None, list, dict): {exc}"
        ) from None
    size = len(text.encode())
    if size > names.MAX_CONNECTION_DETAILS_BYTES:
        raise InvalidConnection(
            f"details are {size} bytes of JSON; a connection holds at most "
            f"{names.MAX_CONNECTION_DETAILS_BYTES} (credentials and addresses, not data)"
        )
    return details


def masked(value: Any) -> Any:
    """``value`` with every leaf replaced by ``****`` (keys and structure kept)."""
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return names.MASK


def secret_values(details: Any) -> list[str]:
    """Every leaf value of ``details`` as text, for masking log lines."""
    if isinstance(details, dict):
        return [text for v in details.values() for text in secret_values(v)]
    if isinstance(details, list):
        return [text for v in details for text in secret_values(v)]
    if details is None or isinstance(details, bool):
        return []
    return [str(details)]


def _variants(value: str) -> set[str]:
    """How a secret value may appear in text: as is, JSON-escaped, repr-escaped."""
    found = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    found.add(repr(value)[1:-1])
    return {v for v in found if len(v) >= names.MIN_MASKED_CHARS}


def mask_pattern(every_details: Iterable[Any]) -> re.Pattern[str] | None:
    """What finds the secret values of these connections' details in text (None: nothing to
    mask), longest first: a value containing another is masked whole."""
    values: set[str] = set()
    for details in every_details:
        for value in secret_values(details):
            values |= _variants(value)
    if not values:
        return None
    ordered = sorted(values, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in ordered))


def masked_values(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """``value`` (JSON: a task's arguments, shown) with the secret values ``pattern`` finds
    masked: a string or key that is one, and inside longer strings those of at least
    ``names.MIN_MASKED_SUBSTRING_CHARS`` (a short value such as a database name ``main`` would
    otherwise mangle ``maintenance``). Numbers are left as they are: a port is no secret."""
    if pattern is None:
        return value
    if isinstance(value, dict):
        return {_masked_text(k, pattern): masked_values(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_values(v, pattern) for v in value]
    if isinstance(value, str):
        return _masked_text(value, pattern)
    return value


def _masked_text(text: str, pattern: re.Pattern[str]) -> str:
    if pattern.fullmatch(text):
        return names.MASK
    return pattern.sub(
        lambda m: names.MASK if len(m[0]) >= names.MIN_MASKED_SUBSTRING_CHARS else m[0], text
    )


def _not_found(name: str) -> ConnectionNotFound:
    return ConnectionNotFound(
        f"No connection named {name!r}; list_connections() (or `taskbus connections`) shows "
        f"them, create_connection({name!r}, type, details) makes one."
    )


async def _copies(bus: Bus, name: str) -> dict[str, ConnectionRecord]:
    """Every copy named ``name`` in the workspaces this credential may see, by key."""
    listings = await asyncio.gather(
        *(
            store.scan(bus, names.CONNECTIONS, ConnectionRecord, keys)
            for keys in scope.filters(bus.creds, name)
        )
    )
    return {key: record for listing in listings for key, record in listing.items()}


async def _one(
    bus: Bus, name: str, *, prefer: str | None = None, ident: str | None = None
) -> tuple[dict[str, ConnectionRecord], dict[str, ConnectionRecord]]:
    """(the copies of the one connection called ``name`` that is meant, every visible copy of
    that name): the one with identity ``ident``, else the only one, else the one added to the
    workspace ``prefer``; several and none preferred is a clear error."""
    copies = await _copies(bus, name)
    groups: dict[str, dict[str, ConnectionRecord]] = {}
    for key, record in copies.items():
        groups.setdefault(record.identity, {})[key] = record
    if ident is not None:
        groups = {ident: groups[ident]} if ident in groups else {}
    if not groups:
        raise _not_found(name)
    if len(groups) == 1:
        return next(iter(groups.values())), copies
    for group in groups.values():
        if prefer is not None and names.connection_key(prefer, name) in group:
            return group, copies
    where = sorted(workspace_of(key) for key in copies)
    raise InvalidConnection(
        f"Several connections are named {name!r} (in workspaces {', '.join(where)}), made by "
        f"users who cannot see each other's: make the workspace of the one you mean current "
        f"(set_current_workspace, or --workspace) and try again."
    )


async def create(
    bus: Bus,
    key: SecretKey,
    *,
    name: object,
    connection_type: object,
    details: object,
    workspace: str,
) -> ConnectionRecord:
    checked = check_name(name)
    if not isinstance(connection_type, str) or not connection_type.strip():
        raise InvalidConnection(
            f"connection_type must be a non-empty string (e.g. 'postgres'), not {connection_type!r}"
        )
    sealed = key.seal(check_details(details), name=checked, workspace=workspace)
    if await _copies(bus, checked):
        raise InvalidConnection(
            f"A connection named {checked!r} exists already; get_connection({checked!r}) "
            f"returns it, or delete it first."
        )
    record = ConnectionRecord(
        name=checked,
        connection_type=connection_type,
        details_token=sealed,
        workspaces=[workspace],
        created_at=utcnow(),
        id=uuid.uuid4().hex,
    )
    if not await store.create(bus.connections, names.connection_key(workspace, checked), record):
        raise InvalidConnection(f"A connection named {checked!r} was just created elsewhere.")
    log.info("created connection %s in workspace %s", checked, workspace)
    return record


async def get(bus: Bus, name: object, *, prefer: str | None = None) -> ConnectionRecord:
    """The connection ``name`` (its copy in ``prefer`` where it has one)."""
    checked = check_name(name)
    group, _ = await _one(bus, checked, prefer=prefer)
    if prefer is not None and names.connection_key(prefer, checked) in group:
        return group[names.connection_key(prefer, checked)]
    return next(iter(group.values()))


async def list_all(bus: Bus, workspace: str | None = None) -> list[ConnectionRecord]:
    """Every connection (or those added to ``workspace``), oldest first."""
    listings = await asyncio.gather(
        *(
            store.scan(bus, names.CONNECTIONS, ConnectionRecord, keys)
            for keys in scope.filters(bus.creds, "*", workspace)
        )
    )
    unique = {r.identity: r for listing in listings for r in listing.values()}
    return sorted(unique.values(), key=lambda r: r.created_at)


async def _rewrite(
    bus: Bus,
    name: str,
    copies: dict[str, ConnectionRecord],
    wanted: list[str],
    secret: SecretKey | None = None,
) -> ConnectionRecord:
    """Make ``copies`` (one connection's) be exactly one per workspace in ``wanted``, each
    listing them all (compare-and-set on every kept copy). A new copy's details are sealed
    again for its own workspace, which takes the ``secret`` key: adding a connection to a
    workspace is granting its secrets there."""
    current = next(iter(copies.values()))
    record = msgspec.structs.replace(current, workspaces=wanted)
    details: dict[str, Any] | None = None
    for ws in wanted:
        key = names.connection_key(ws, name)
        if key in copies:
            await store.update(bus.connections, key, ConnectionRecord, _listing(wanted))
            continue
        if secret is None:
            raise InvalidConnection(f"adding connection {name!r} needs the secret key")
        if details is None:
            details = secret.open(current.details_token, name=name, workspaces=current.workspaces)
        token = secret.seal(details, name=name, workspace=ws)
        await store.create(
            bus.connections, key, msgspec.structs.replace(record, details_token=token)
        )
    for key in copies:
        if key.split(".", 1)[0] not in wanted:
            await bus.connections.delete(key)
    return record


def _listing(wanted: list[str]) -> Callable[[ConnectionRecord], ConnectionRecord]:
    """A copy with its own token, listing every workspace the connection is added to."""

    def mutate(copy: ConnectionRecord) -> ConnectionRecord:
        return msgspec.structs.replace(copy, workspaces=wanted)

    return mutate


async def add(
    bus: Bus, name: object, workspace: str, secret: SecretKey, *, prefer: str | None = None
) -> ConnectionRecord:
    """Add the connection ``name`` (the one of ``prefer`` where several have that name) to
    ``workspace``."""
    checked = check_name(name)
    group, every = await _one(bus, checked, prefer=prefer)
    current = next(iter(group.values()))
    if workspace in current.workspaces:
        return current
    if names.connection_key(workspace, checked) in every:
        raise InvalidConnection(
            f"Workspace {workspace!r} has a connection named {checked!r} of its own; delete "
            f"or rename that one first."
        )
    return await _rewrite(bus, checked, group, [*current.workspaces, workspace], secret)


async def remove(bus: Bus, name: object, workspace: str) -> ConnectionRecord:
    checked = check_name(name)
    group, _ = await _one(bus, checked, prefer=workspace)
    current = next(iter(group.values()))
    if workspace not in current.workspaces:
        raise ConnectionNotFound(
            f"Connection {checked!r} is not added to workspace {workspace!r} (it is in "
            f"{', '.join(current.workspaces) or 'none'})."
        )
    left = [w for w in current.workspaces if w != workspace]
    if not left:
        raise InvalidConnection(
            f"Connection {checked!r} is added only to workspace {workspace!r}: add it to "
            f"another one first, or delete it with delete_connection()."
        )
    return await _rewrite(bus, checked, group, left)


async def delete(
    bus: Bus, name: object, *, prefer: str | None = None, ident: str | None = None
) -> None:
    """Delete the connection ``name`` (the one with identity ``ident``, or of ``prefer``
    where several have that name) from every workspace it is added to."""
    checked = check_name(name)
    group, _ = await _one(bus, checked, prefer=prefer, ident=ident)
    listed = next(iter(group.values())).workspaces
    beyond = [ws for ws in listed if not scope.may_see(bus.creds, ws)]
    if beyond:  # deleting only the copies in reach would leave the others listing them
        who = bus.refusal(names.connection_key(beyond[0], checked)).credential
        raise PermissionDenied(
            f"delete the connection {checked!r}",
            who,
            f"It is also added to {', '.join(beyond)}, which this credential cannot reach: "
            f"remove it there first (Workspace.remove_connection), or delete it with a "
            f"credential granted those workspaces.",
        )
    for key in group:
        await bus.connections.delete(key)


def workspace_of(key: str) -> str:
    return key.split(".", 1)[0]
