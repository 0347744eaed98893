"""Workspaces: named groups of orchestrations, tasks and connections, with the reference SDK's
int ids.

One record per workspace in ``taskbus_workspaces``, keyed by name. Ids come from a
compare-and-set on a counter key, so two clients creating workspaces at once never share one,
and an id never changes. ``default`` (id 1) always exists: provisioning creates it, and an
orchestration or task whose ``workspace`` label is empty — every record of a store made before
workspaces — is in it. Provisioning also adopts the labels that stores made before already
use as workspaces (``migrate``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from broker import names, scope, store
from broker.errors import (
    InvalidWorkspace,
    PermissionDenied,
    WorkspaceNameType,
    WorkspaceNotFound,
    WrongArgumentType,
)
from broker.models import (
    OrchestrationRecord,
    TaskRecord,
    WorkspaceIds,
    WorkspaceRecord,
    decode,
    encode,
    utcnow,
)

if TYPE_CHECKING:
    from broker import tokens
    from broker.connection import Bus

log = logging.getLogger(__name__)

_NAME = re.compile(names.NAME_PATTERN)
ID_ATTEMPTS = 50  # compare-and-set retries on the id counter before giving up


def label(name: str) -> str:
    """The ``workspace`` label records carry: "" for the default workspace (as stores made
    before workspaces have it), else the name."""
    return "" if name == names.DEFAULT_WORKSPACE else name


def name_of(workspace_label: str) -> str:
    """The workspace a record's label puts it in."""
    return workspace_label or names.DEFAULT_WORKSPACE


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise WorkspaceNameType(
            f"A workspace name must be a str, not {type(name).__name__}: {name!r}"
        )
    if not _NAME.fullmatch(name):
        raise InvalidWorkspace(
            f"{name!r} is not a valid workspace name: use 1-64 letters, digits, '-' or '_', "
            f"starting with a letter or digit (e.g. 'team-a')."
        )
    return name


def check_filters(workspace_id: object, workspace_name: object) -> None:
    """The ``workspace_id=`` / ``workspace_name=`` filters' types (a wrong type is a TypeError,
    as in the reference SDK)."""
    if workspace_id is not None and (
        isinstance(workspace_id, bool) or not isinstance(workspace_id, int)
    ):
        raise WrongArgumentType(
            f"workspace_id must be an int (Workspace.id()), not "
            f"{type(workspace_id).__name__}: {workspace_id!r}"
        )
    if workspace_name is not None and not isinstance(workspace_name, str):
        raise WrongArgumentType(
            f"workspace_name must be a str, not {type(workspace_name).__name__}: {workspace_name!r}"
        )


def _default() -> WorkspaceRecord:
    return WorkspaceRecord(
        id=names.DEFAULT_WORKSPACE_ID, name=names.DEFAULT_WORKSPACE, created_at=utcnow()
    )


async def _next_id(kv: KeyValue) -> int:
    for _ in range(ID_ATTEMPTS):
        try:
            entry = await kv.get(names.WORKSPACE_IDS)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value or entry.revision is None:
            try:
                await kv.create(
                    names.WORKSPACE_IDS,
                    encode(WorkspaceIds(last_id=names.DEFAULT_WORKSPACE_ID + 1)),
                )
            except KeyWrongLastSequenceError:
                continue
            return names.DEFAULT_WORKSPACE_ID + 1
        try:
            last = decode(WorkspaceIds, entry.value).last_id
        except msgspec.DecodeError:
            raise InvalidWorkspace(
                f"The workspace id counter ({names.WORKSPACES} key {names.WORKSPACE_IDS!r}) "
                f'is not readable: an admin must put a record there ({{"last_id": N}}, N at '
                f"least the highest workspace id) before workspaces can be created."
            ) from None
        try:
            await kv.update(
                names.WORKSPACE_IDS, encode(WorkspaceIds(last_id=last + 1)), last=entry.revision
            )
        except KeyWrongLastSequenceError:
            continue
        return last + 1
    raise RuntimeError(f"gave up allocating a workspace id after {ID_ATTEMPTS} conflicts")


async def ensure_default(kv: KeyValue) -> None:
    """Create ``default`` unless it exists (idempotent; provisioning calls it)."""
    found = await store.get(kv, names.DEFAULT_WORKSPACE, WorkspaceRecord)
    if found is None:
        await store.create(kv, names.DEFAULT_WORKSPACE, _default())


async def create(kv: KeyValue, name: object, creds: tokens.Creds | None = None) -> WorkspaceRecord:
    """A new workspace (``InvalidWorkspace`` for a bad or taken name). Only a credential
    granted every workspace (or an infrastructure role) may create one: a user granted some
    could not use a workspace it made, and may not touch the id counter."""
    checked = check_name(name)
    if scope.visible(creds) is not None:
        assert creds is not None
        raise PermissionDenied(
            f"create the workspace {checked!r}",
            f"the {creds.role} credential {creds.name!r} (granted workspaces "
            f"{', '.join(scope.visible(creds) or ()) or 'none'})",
            "Workspaces are created by the admin or a credential granted every workspace "
            "(`taskbus auth user NAME --role user --all-workspaces`); ask one to create it and "
            "to grant it to you.",
        )
    if await store.get(kv, checked, WorkspaceRecord) is not None:
        raise InvalidWorkspace(
            f"A workspace named {checked!r} exists already; get_workspace({checked!r}) returns it."
        )
    record = WorkspaceRecord(id=await _next_id(kv), name=checked, created_at=utcnow())
    if not await store.create(kv, checked, record):
        raise InvalidWorkspace(f"A workspace named {checked!r} was just created by another client.")
    log.info("created workspace %s (id %d)", checked, record.id)
    return record


async def get(
    kv: KeyValue,
    name: object,
    *,
    create_if_not_exist: bool = False,
    creds: tokens.Creds | None = None,
) -> WorkspaceRecord:
    checked = check_name(name)
    found = await store.get(kv, checked, WorkspaceRecord)
    if found is not None:
        return found[0]
    if checked == names.DEFAULT_WORKSPACE:  # a store provisioned before workspaces existed
        await ensure_default(kv)
        return await get(kv, checked)
    if not create_if_not_exist:
        raise WorkspaceNotFound(
            f"No workspace named {checked!r}; list_workspaces() (or `taskbus workspaces`) "
            f"shows them, create_workspace({checked!r}) makes it."
        )
    try:
        return await create(kv, checked, creds)
    except InvalidWorkspace:  # created meanwhile by another client
        return await get(kv, checked)


async def list_all(bus: Bus) -> list[WorkspaceRecord]:
    """Every workspace this connection may see, by id (``default`` first)."""
    listings = await asyncio.gather(
        *(
            store.scan(bus, names.WORKSPACES, WorkspaceRecord, keys, accept=_NAME.fullmatch)
            for keys in scope.filters(bus.creds, None)
        )
    )
    found = {
        r.name: r
        for listing in listings
        for key, r in listing.items()
        if key == r.name and _NAME.fullmatch(key)  # not the id counter nor the schema mark
    }
    if scope.may_see(bus.creds, names.DEFAULT_WORKSPACE):
        found.setdefault(names.DEFAULT_WORKSPACE, _default())
    return sorted(found.values(), key=lambda r: r.id)


def current_default(bus: Bus) -> str:
    """The workspace uploads and new tasks go to when none is named: ``default``, unless the
    credential is granted others only (then the first of them)."""
    seen = scope.visible(bus.creds)
    if seen is None or names.DEFAULT_WORKSPACE in seen or not seen:
        return names.DEFAULT_WORKSPACE
    return seen[0]


async def resolve(
    bus: Bus, workspace_id: object = None, workspace_name: object = None
) -> str | None:
    """The workspace name a ``workspace_id=`` / ``workspace_name=`` filter names (None: no
    filter); ``WorkspaceNotFound`` for an unknown one, ``WrongArgumentType`` for a bad type."""
    check_filters(workspace_id, workspace_name)
    if workspace_id is None and workspace_name is None:
        return None
    if workspace_name is not None:
        named = (await get(bus.workspaces, workspace_name)).name
        if workspace_id is not None and (await by_id(bus, workspace_id)).name != named:
            raise WorkspaceNotFound(
                f"Workspace {workspace_name!r} does not have the id {workspace_id}; give one "
                f"of workspace_id= or workspace_name=."
            )
        return named
    return (await by_id(bus, workspace_id)).name


async def by_id(bus: Bus, workspace_id: object) -> WorkspaceRecord:
    for record in await list_all(bus):
        if record.id == workspace_id:
            return record
    raise WorkspaceNotFound(
        f"No workspace with id {workspace_id!r}; list_workspaces() (or `taskbus workspaces`) "
        f"shows the ids."
    )


async def migrate(workspaces: KeyValue, *labelled: KeyValue) -> None:
    """Make ``default``, and a workspace for every label the records of ``labelled`` buckets
    use (a store made before workspaces; called when the workspaces bucket is new)."""
    await ensure_default(workspaces)
    seen: set[str] = set()
    for kv in labelled:
        try:
            keys = await kv.keys()
        except NoKeysError:
            continue
        kind: type[OrchestrationRecord | TaskRecord] = (
            OrchestrationRecord if kv._name == names.ORCHESTRATIONS else TaskRecord
        )
        for key in keys:
            try:
                found = await store.get(kv, key, kind)
            except msgspec.DecodeError:
                continue
            if found is not None and found[0].workspace:
                seen.add(found[0].workspace)
    for name in sorted(seen):
        if _NAME.fullmatch(name) and await store.get(workspaces, name, WorkspaceRecord) is None:
            try:
                await create(workspaces, name)
            except InvalidWorkspace:
                continue
            log.info("workspace %s adopted from existing records", name)
