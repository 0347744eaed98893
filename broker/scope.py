"""Workspaces in keys: what a connection may see, and where a record belongs.

Every key of a workspace's records starts with the workspace's name (``broker.names``), and a
user's or operator's credential carries the workspaces it is granted as ``workspace:<name>``
tags (``workspace:*``: all of them); the server fills ``{{tag(workspace)}}`` in the role's
template with them (``broker.roles``). So a listing asks for exactly the workspaces it may see
(``filters``) — one that asked for more would be refused whole — and a reader takes a record's
workspace from its key (``adopt``), which the server scoped, never from the record's own field,
which whoever wrote the record chose.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, TypeVar

import msgspec

from broker import names
from broker.models import OrchestrationRecord, RunRecord, TaskRecord

if TYPE_CHECKING:
    from broker import tokens

ALL = "*"  # the tag value (and key token) that stands for every workspace
_NAME = re.compile(names.NAME_PATTERN)
_SCOPED_ROLES = ("user", "operator", "run")

R = TypeVar("R", OrchestrationRecord, TaskRecord, RunRecord)


def visible(creds: tokens.Creds | None) -> tuple[str, ...] | None:
    """The workspaces a credential may see: None for every one (no authentication, the
    infrastructure roles, or a ``workspace:*`` grant), else their names."""
    if creds is None or creds.role not in _SCOPED_ROLES:
        return None
    granted = tuple(
        tag.removeprefix("workspace:") for tag in creds.tags if tag.startswith("workspace:")
    )
    if ALL in granted:
        return None
    return tuple(name for name in granted if _NAME.fullmatch(name))


def filters(
    creds: tokens.Creds | None, rest: str | None = ">", workspace: str | None = None
) -> list[str]:
    """Key filters for a listing of ``<workspace>.<rest>`` (``rest`` None: of the workspace
    names themselves) over what ``creds`` may see, or of one workspace only (none at all when
    it is not visible)."""
    seen = visible(creds)
    if workspace is not None:
        chosen: tuple[str, ...] = (workspace,) if seen is None or workspace in seen else ()
    else:
        chosen = (ALL,) if seen is None else seen
    return [name if rest is None else f"{name}.{rest}" for name in chosen]


def may_see(creds: tokens.Creds | None, workspace: str) -> bool:
    seen = visible(creds)
    return seen is None or workspace in seen


def split(key: str, tokens_after: int) -> list[str] | None:
    """``key``'s tokens when it is ``<workspace>`` and ``tokens_after`` ids (UUIDs, or run ids)
    after it, each a well-formed token; else None (a key nobody of ours wrote)."""
    parts = key.split(".")
    if len(parts) != tokens_after + 1 or not _NAME.fullmatch(parts[0]):
        return None
    if not all(_ID.fullmatch(part) for part in parts[1:]):
        return None
    return parts


# Task, orchestration and run ids: UUIDs, and run ids derived from them (``dispatch``); never a
# wildcard or an empty token.
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def adopt(key: str, record: R) -> R | None:
    """``record`` as stored at ``key``, with the key's workspace; None when the key is not a
    well-formed key of that kind or its ids disagree with the record's."""
    if isinstance(record, RunRecord):
        parts = split(key, 2)
        if parts is None or (parts[1], parts[2]) != (record.task_id, record.run_id):
            return None
    else:
        parts = split(key, 1)
        if parts is None or parts[1] != record.id:
            return None
    label = "" if parts[0] == names.DEFAULT_WORKSPACE else parts[0]
    if record.workspace == label:
        return record
    return msgspec.structs.replace(record, workspace=label)


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
