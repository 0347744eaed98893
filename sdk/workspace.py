"""Workspaces (the reference's spellings): ``Workspace.id()`` is an int, ``name()`` a str, and
connections are added to and removed from them here."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker import connections
from broker.models import WorkspaceRecord
from sdk import display
from sdk.connection import AsyncConnection, Connection, ConnectionList
from sdk.portal import Portal
from sdk.session import refusing

if TYPE_CHECKING:
    from sdk.client import AsyncClient


@refusing
class AsyncWorkspace(display.Shown):
    """A workspace. ``id()``, ``name()`` and ``created_at()`` need no I/O."""

    def __init__(self, client: AsyncClient, record: WorkspaceRecord) -> None:
        self._client = client
        self._record = record

    def id(self) -> int:
        return self._record.id

    def name(self) -> str:
        return self._record.name

    def created_at(self) -> datetime:
        return self._record.created_at

    async def add_connection(self, name: str) -> None:
        """Add the connection ``name`` to this workspace (its runs may then read it)."""
        bus = await self._client.session.bus()
        key = self._client.session.secret_key()
        prefer = self._client.current_name(bus)
        await connections.add(bus, name, self._record.name, key, prefer=prefer)

    async def remove_connection(self, name: str) -> None:
        bus = await self._client.session.bus()
        await connections.remove(bus, name, self._record.name)

    async def list_connections(self) -> ConnectionList[AsyncConnection]:
        bus = await self._client.session.bus()
        found = await connections.list_all(bus, self._record.name)
        return ConnectionList(AsyncConnection(self._client, r) for r in found)

    def to_dict(self) -> dict[str, Any]:
        return display.jsonable(self._record)

    def _display(self) -> dict[str, str]:
        return {
            "id": str(self._record.id),
            "name": self._record.name,
            "created at": display.iso(self._record.created_at),
        }

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Workspace):
            other = other._a
        return isinstance(other, AsyncWorkspace) and other._record.id == self._record.id

    def __hash__(self) -> int:
        return hash(self._record.id)


class Workspace(display.Shown):
    """A workspace (sync facade over ``AsyncWorkspace``)."""

    def __init__(self, inner: AsyncWorkspace, portal: Portal) -> None:
        self._a = inner
        self._portal = portal

    def id(self) -> int:
        return self._a.id()

    def name(self) -> str:
        return self._a.name()

    def created_at(self) -> datetime:
        return self._a.created_at()

    def add_connection(self, name: str) -> None:
        self._portal.call(self._a.add_connection, name)

    def remove_connection(self, name: str) -> None:
        self._portal.call(self._a.remove_connection, name)

    def list_connections(self) -> ConnectionList[Connection]:
        found = self._portal.call(self._a.list_connections)
        return ConnectionList(Connection(c, self._portal) for c in found)

    def to_dict(self) -> dict[str, Any]:
        return self._a.to_dict()

    def _display(self) -> dict[str, str]:
        return self._a._display()

    def __eq__(self, other: object) -> bool:
        return self._a == other

    def __hash__(self) -> int:
        return hash(self._a)


class WorkspaceList(display.ShownList[display.D]):
    columns = ("id", "name", "created at")
    empty = "(no workspaces)"
