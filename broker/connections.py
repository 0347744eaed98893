"""Data connections (the reference's ``create_connection`` / ``get_connection``): named, typed
JSON details, encrypted with the operator's key (``broker.secret_key``) before they reach the
bus, and added to workspaces.

A connection has one record per workspace it is added to, keyed ``<workspace>.<name>`` in
``taskbus_connections`` (the workspace leads the subject, so server permissions can scope it);
every copy lists all the workspaces. Names are unique across workspaces, so ``get_connection``
needs none. Only broker code holds the key's results: ``details`` are decrypted here, and
everything shown to a person goes through ``masked``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from broker import names, scope, store
from broker.errors import ConnectionNotFound, InvalidConnection, WrongArgumentType
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


def _not_found(name: str) -> ConnectionNotFound:
    return ConnectionNotFound(
        f"No connection named {name!r}; list_connections() (or `taskbus connections`) shows "
        f"them, create_connection({name!r}, type, details) makes one."
    )


async def _copies(bus: Bus, name: str) -> dict[str, ConnectionRecord]:
    """Every copy of connection ``name`` in the workspaces this connection may see, by key."""
    listings = await asyncio.gather(
        *(
            store.scan(bus, names.CONNECTIONS, ConnectionRecord, keys)
            for keys in scope.filters(bus.creds, name)
        )
    )
    return {key: record for listing in listings for key, record in listing.items()}


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
    )
    if not await store.create(bus.connections, names.connection_key(workspace, checked), record):
        raise InvalidConnection(f"A connection named {checked!r} was just created elsewhere.")
    log.info("created connection %s in workspace %s", checked, workspace)
    return record


async def get(bus: Bus, name: object) -> ConnectionRecord:
    checked = check_name(name)
    copies = await _copies(bus, checked)
    if not copies:
        raise _not_found(checked)
    return next(iter(copies.values()))


async def list_all(bus: Bus, workspace: str | None = None) -> list[ConnectionRecord]:
    """Every connection (or those added to ``workspace``), oldest first."""
    listings = await asyncio.gather(
        *(
            store.scan(bus, names.CONNECTIONS, ConnectionRecord, keys)
            for keys in scope.filters(bus.creds, "*", workspace)
        )
    )
    unique = {r.name: r for listing in listings for r in listing.values()}
    return sorted(unique.values(), key=lambda r: r.created_at)


async def _rewrite(
    bus: Bus, name: str, wanted: list[str], secret: SecretKey | None = None
) -> ConnectionRecord:
    """Make the copies of ``name`` be exactly one per workspace in ``wanted``, each listing
    them all (compare-and-set on every kept copy). A new copy's details are sealed again for
    its own workspace, which takes the ``secret`` key: adding a connection to a workspace is
    granting its secrets there."""
    copies = await _copies(bus, name)
    if not copies:
        raise _not_found(name)
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


async def add(bus: Bus, name: object, workspace: str, secret: SecretKey) -> ConnectionRecord:
    checked = check_name(name)
    current = await get(bus, checked)
    if workspace in current.workspaces:
        return current
    return await _rewrite(bus, checked, [*current.workspaces, workspace], secret)


async def remove(bus: Bus, name: object, workspace: str) -> ConnectionRecord:
    checked = check_name(name)
    current = await get(bus, checked)
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
    return await _rewrite(bus, checked, left)


async def delete(bus: Bus, name: object) -> None:
    checked = check_name(name)
    copies = await _copies(bus, checked)
    if not copies:
        raise _not_found(checked)
    for key in copies:
        await bus.connections.delete(key)


def workspace_of(key: str) -> str:
    return key.split(".", 1)[0]
