"""Data connections: named, typed details, encrypted on the bus and masked wherever they are
shown (repr, HTML, tables, ``to_dict()`` and so ``--json``); only ``details()`` returns the
values.

Outside a task, ``details()`` decrypts with the operator's key (``TASKBUS_SECRET_KEY`` or
``<data dir>/auth/secret.key``). Inside a task the run has no key and needs no connection to
the bus: the executor wrote the connections of the task's workspace, decrypted, to the run's
private ``TASKBUS_CONNECTIONS_FILE``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker import connections, names
from broker.errors import SecretKeyError
from broker.models import ConnectionRecord
from sdk import display
from sdk.portal import Portal
from sdk.session import refusing

if TYPE_CHECKING:
    from sdk.client import AsyncClient


@refusing
class AsyncConnection(display.Shown):
    """A connection. Every getter, ``details()`` included, is a plain method."""

    def __init__(
        self,
        client: AsyncClient,
        record: ConnectionRecord,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._record = record
        self._details = details  # given inside a task (the run's file); else decrypted

    def name(self) -> str:
        return self._record.name

    def connection_type(self) -> str:
        return self._record.connection_type

    def workspace_names(self) -> list[str]:
        return list(self._record.workspaces)

    def created_at(self) -> datetime:
        return self._record.created_at

    def details(self) -> dict[str, Any]:
        """The details in clear (a copy): ``SecretKeyError`` when the key is missing or is
        not the one they were stored with."""
        if self._details is None:
            self._details = self._client.session.secret_key().open(
                self._record.details_token,
                name=self._record.name,
                workspaces=self._record.workspaces,
            )
        result: dict[str, Any] = json.loads(json.dumps(self._details))
        return result

    async def delete_connection(self) -> None:
        """Delete the connection from every workspace it is added to."""
        bus = await self._client.session.bus()
        await connections.delete(bus, self._record.name, ident=self._record.identity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, the details masked (only ``details()`` shows them)."""
        data = display.jsonable(self._record)
        data.pop("details_token", None)
        data["details"] = self._masked()
        return data

    def _masked(self) -> Any:
        """The details' keys with every value masked; without the key, only the mask."""
        try:
            return connections.masked(self.details())
        except SecretKeyError:  # no key here: show that there are details, not what
            return names.MASK

    def _display(self) -> dict[str, str]:
        return {
            "name": self._record.name,
            "type": self._record.connection_type,
            "details": json.dumps(self._masked()),
            "workspaces": ", ".join(self._record.workspaces) or display.NONE,
            "created at": display.iso(self._record.created_at),
        }


class Connection(display.Shown):
    """A connection (sync facade over ``AsyncConnection``)."""

    def __init__(self, inner: AsyncConnection, portal: Portal) -> None:
        self._a = inner
        self._portal = portal

    def name(self) -> str:
        return self._a.name()

    def connection_type(self) -> str:
        return self._a.connection_type()

    def workspace_names(self) -> list[str]:
        return self._a.workspace_names()

    def created_at(self) -> datetime:
        return self._a.created_at()

    def details(self) -> dict[str, Any]:
        return self._a.details()

    def delete_connection(self) -> None:
        self._portal.call(self._a.delete_connection)

    def to_dict(self) -> dict[str, Any]:
        return self._a.to_dict()

    def _display(self) -> dict[str, str]:
        return self._a._display()


class ConnectionList(display.ShownList[display.D]):
    columns = ("name", "type", "details", "workspaces", "created at")
    empty = "(no connections)"
