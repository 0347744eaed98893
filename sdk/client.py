"""The clients: ``AsyncClient`` (the async core on nats-py) and ``Client`` (its sync facade,
running the core on a background event loop through an anyio blocking portal)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

from broker import catalog, connections, names, workspaces
from broker.connection import Bus
from broker.errors import (
    ConnectionNotGranted,
    InvalidArgument,
    OrchestrationMissingFile,
    SecretKeyError,
    WrongArgumentType,
)
from broker.models import ConnectionRecord, RunRecord, TaskRecord
from broker.settings import ConnectSettings
from sdk import intask
from sdk.connection import AsyncConnection, Connection, ConnectionList
from sdk.lists import OrchestrationList, TaskList
from sdk.orchestration import AsyncOrchestration, Orchestration, check_name
from sdk.portal import Portal
from sdk.session import Session, refusing
from sdk.task import AsyncTask, Task
from sdk.workspace import AsyncWorkspace, Workspace, WorkspaceList

T = TypeVar("T")


def read_upload(
    bytes_buffer: bytes | bytearray | memoryview | BinaryIO | None,
    path: str | os.PathLike[str] | None,
    file_name: str | None,
) -> tuple[bytes, str]:
    """The zip's bytes and its file name, from exactly one of ``bytes_buffer`` / ``path``."""
    if bytes_buffer is not None and path is not None:
        raise OrchestrationMissingFile(
            "Give either path= or bytes_buffer= to upload_orchestration(), not both."
        )
    if bytes_buffer is None and path is None:
        raise OrchestrationMissingFile(
            "upload_orchestration() needs a zip: pass path='my_task.zip' or bytes_buffer=<bytes>."
        )
    if path is not None:
        source = Path(path)
        if not source.exists():
            raise OrchestrationMissingFile(f"No file at {str(source)!r}: check the path.")
        if source.is_dir():
            raise OrchestrationMissingFile(
                f"{str(source)!r} is a directory: zip it first "
                f"(`cd {source} && zip -r ../{source.name}.zip .`)."
            )
        return source.read_bytes(), file_name or source.name
    if isinstance(bytes_buffer, bytes | bytearray | memoryview):
        data = bytes(bytes_buffer)
    elif bytes_buffer is not None and hasattr(bytes_buffer, "read"):
        data = bytes_buffer.read()
        if not isinstance(data, bytes):
            raise WrongArgumentType(
                "bytes_buffer's read() must return bytes: open the file in 'rb' mode"
            )
    else:
        raise WrongArgumentType(f"bytes_buffer must be bytes, not {type(bytes_buffer).__name__}")
    return data, file_name or "-"


def check_request_timeout(request_timeout: object) -> float | None:
    """Seconds (a positive number) or None."""
    if request_timeout is None:
        return None
    if isinstance(request_timeout, bool) or not isinstance(request_timeout, int | float):
        raise WrongArgumentType(
            f"request_timeout must be a number of seconds or None, not "
            f"{type(request_timeout).__name__}: {request_timeout!r}"
        )
    if not request_timeout > 0:
        raise InvalidArgument(f"request_timeout must be > 0 seconds, not {request_timeout!r}")
    return float(request_timeout)


@refusing
class AsyncClient:
    """Talks to Taskbus over NATS. Connects on first use (or ``await connect()`` /
    ``async with``); ``close()`` releases the connection.

    The reference SDK's keywords are accepted: ``request_timeout`` (seconds) bounds each
    request of the sync ``Client`` (``RequestTimeout``; waits and follows take their own
    timeout); ``api_endpoint``, ``auth_endpoint``, ``auth_type`` and ``interactive`` are
    accepted and ignored (Taskbus connects to NATS at ``url``; ``auth_type`` is ignored by the
    reference too)."""

    def __init__(
        self,
        url: str | None = None,
        workspace: str | None = None,
        *,
        api_endpoint: str | None = None,
        auth_endpoint: str | None = None,
        auth_type: str | None = None,
        interactive: bool | None = None,
        request_timeout: float | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds: str | None = None,
        settings: ConnectSettings | None = None,
    ) -> None:
        del api_endpoint, auth_endpoint, auth_type, interactive  # the reference's; ignored
        self.request_timeout_s = check_request_timeout(request_timeout)
        self._settings = settings or ConnectSettings.from_env(
            url, user=user, password=password, token=token, creds_file=creds, name="taskbus-sdk"
        )
        if workspace is None:
            workspace = os.environ.get(names.ENV_WORKSPACE, "")
        self._workspace = workspace  # the current workspace's name ("": default)
        self.session = Session(self._settings)  # the connection every object shares

    @property
    def url(self) -> str:
        return ",".join(self._settings.urls)

    @property
    def settings(self) -> ConnectSettings:
        return self._settings

    def workspace(self) -> str:
        """The label new orchestrations get ("" for the default workspace)."""
        return workspaces.label(self._workspace)

    async def connect(self) -> Self:
        """Connect now (``NotConnected`` names the URL and how to start a server)."""
        await self.session.bus()
        return self

    def refusals(self) -> AbstractAsyncContextManager[None]:
        """While inside, an action the server refuses raises ``PermissionDenied`` at once."""
        return self.session.refusals()

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- orchestrations ----------------------------------------------------------------------
    async def upload_orchestration(
        self,
        bytes_buffer: bytes | bytearray | memoryview | BinaryIO | None = None,
        path: str | os.PathLike[str] | None = None,
        name: str | None = None,
        file_name: str | None = None,
    ) -> AsyncOrchestration:
        """Upload a zip (exactly one of ``path`` / ``bytes_buffer``), validated first; returns
        at once, with status ``pending_packaging``."""
        data, file_name = read_upload(bytes_buffer, path, file_name)
        if name is not None:
            check_name(name, "orchestration")
        bus = await self.session.bus()
        current = await self._current(bus)
        record = await catalog.upload_orchestration(
            bus, data, name=name, file_name=file_name, workspace=current.name()
        )
        return AsyncOrchestration(self, record)

    async def _filter(
        self, bus: Bus, workspace_id: object, workspace_name: object, workspace: str | None
    ) -> str | None:
        """The workspace name a listing keeps (None: all). ``workspace=`` is the label
        filter of releases before workspaces existed, kept as it was (no existence check)."""
        if workspace is not None:
            return workspaces.name_of(workspace)
        return await workspaces.resolve(bus, workspace_id, workspace_name)

    async def list_orchestrations(
        self,
        workspace_id: int | None = None,
        workspace_name: str | None = None,
        *,
        workspace: str | None = None,
    ) -> OrchestrationList[AsyncOrchestration]:
        """Every orchestration (of one workspace when given), oldest first; a non-int
        ``workspace_id`` or non-str ``workspace_name`` is a ``TypeError``, an unknown one
        ``WorkspaceNotFound``."""
        workspaces.check_filters(workspace_id, workspace_name)
        bus = await self.session.bus()
        wanted = await self._filter(bus, workspace_id, workspace_name, workspace)
        records = await catalog.list_orchestrations(bus, wanted)
        return OrchestrationList(AsyncOrchestration(self, r) for r in records)

    async def get_orchestration(self, id_or_name: str) -> AsyncOrchestration:
        """By id, else the newest upload with that name (``OrchestrationNotFound``)."""
        check_name(id_or_name, "orchestration id or")
        bus = await self.session.bus()
        return AsyncOrchestration(self, await catalog.get_orchestration(bus, id_or_name))

    # --- tasks -------------------------------------------------------------------------------
    async def list_tasks(
        self,
        killed: bool = False,
        workspace_id: int | None = None,
        workspace_name: str | None = None,
        *,
        workspace: str | None = None,
    ) -> TaskList[AsyncTask]:
        """``killed=False``: every task; ``True``: only killed ones. Newest change first.
        ``workspace_id`` / ``workspace_name`` as for ``list_orchestrations``."""
        workspaces.check_filters(workspace_id, workspace_name)
        bus = await self.session.bus()
        wanted = await self._filter(bus, workspace_id, workspace_name, workspace)
        tasks, runs = await asyncio.gather(
            catalog.list_tasks(bus, wanted), catalog.all_runs(bus, wanted)
        )
        chosen = [t for t in tasks if not killed or t.killed]
        chosen.sort(key=lambda t: t.updated_at, reverse=True)
        masks = await self.secret_patterns(bus, {t.workspace for t in chosen if t.json_args})
        return TaskList(
            AsyncTask(self, t, runs.get(t.key, []), mask=masks.get(t.workspace)) for t in chosen
        )

    async def get_task_by_id(self, task_id: str) -> AsyncTask:
        """``ValueError`` for a malformed id, ``TaskNotFound`` for an unknown one."""
        catalog.check_id(task_id)
        bus = await self.session.bus()
        record = await catalog.get_task(bus, task_id)
        return await self.task_of(bus, record, await catalog.runs_of(bus, record))

    async def task_of(self, bus: Bus, record: TaskRecord, runs: list[RunRecord]) -> AsyncTask:
        """``record`` as an ``AsyncTask``, its arguments masked for its workspace's secrets."""
        wanted = {record.workspace} if record.json_args else set()
        masks = await self.secret_patterns(bus, wanted)
        return AsyncTask(self, record, runs, mask=masks.get(record.workspace))

    async def secret_patterns(
        self, bus: Bus, labels: set[str]
    ) -> dict[str, re.Pattern[str] | None]:
        """By workspace label: what finds its connections' secret values in a task's
        arguments, to mask them where they are shown. Only where this client may decrypt them
        (the key here, or inside a task the run's own workspace's); elsewhere none."""
        if not labels:
            return {}
        granted = intask.connections()
        if granted is not None:  # a run sees the tasks of its own workspace only
            found = granted.get("connections", {}).values()
            pattern = connections.mask_pattern(c.get("details") for c in found)
            return dict.fromkeys(labels, pattern)
        try:
            key = self.session.secret_key()
        except SecretKeyError:
            return {}
        patterns: dict[str, re.Pattern[str] | None] = {}
        for label in labels:
            records = await connections.list_all(bus, workspaces.name_of(label))
            patterns[label] = connections.mask_pattern(key.open_each(records))
        return patterns

    # --- workspaces --------------------------------------------------------------------------
    async def _current(self, bus: Bus) -> AsyncWorkspace:
        """The current workspace (one named with ``Client(workspace=…)`` is made on first
        use, as releases before workspaces let any label be used)."""
        name = self.current_name(bus)
        record = await workspaces.get(
            bus.workspaces, name, create_if_not_exist=True, creds=bus.creds
        )
        return AsyncWorkspace(self, record)

    async def list_workspaces(self) -> WorkspaceList[AsyncWorkspace]:
        """Every workspace, by id (``default`` first)."""
        bus = await self.session.bus()
        return WorkspaceList(AsyncWorkspace(self, r) for r in await workspaces.list_all(bus))

    async def create_workspace(self, name: str) -> AsyncWorkspace:
        """A new workspace; ``InvalidWorkspace`` for a malformed or taken name."""
        workspaces.check_name(name)
        bus = await self.session.bus()
        return AsyncWorkspace(self, await workspaces.create(bus.workspaces, name, bus.creds))

    async def get_workspace(self, name: str, create_if_not_exist: bool = False) -> AsyncWorkspace:
        """``WorkspaceNotFound`` for an unknown name unless ``create_if_not_exist``."""
        workspaces.check_name(name)
        bus = await self.session.bus()
        record = await workspaces.get(
            bus.workspaces, name, create_if_not_exist=create_if_not_exist, creds=bus.creds
        )
        return AsyncWorkspace(self, record)

    def set_current_workspace(self, workspace: AsyncWorkspace | Workspace) -> AsyncWorkspace:
        """Uploads (and so new tasks) go to ``workspace`` from now on; no I/O."""
        inner = workspace._a if isinstance(workspace, Workspace) else workspace
        if not isinstance(inner, AsyncWorkspace):
            raise WrongArgumentType(
                f"set_current_workspace() takes a Workspace (from get_workspace() or "
                f"create_workspace()), not {type(workspace).__name__}: {workspace!r}"
            )
        self._workspace = inner.name()
        return inner

    async def get_current_workspace(self) -> AsyncWorkspace:
        return await self._current(await self.session.bus())

    # --- connections -------------------------------------------------------------------------
    async def create_connection(
        self, name: str, connection_type: str, details: dict[str, Any]
    ) -> AsyncConnection:
        """Store a connection in the current workspace, its details encrypted with the
        operator's key; ``InvalidConnection`` for a taken name or details that are not a JSON
        object under the size limit."""
        connections.check_name(name)
        connections.check_details(details)
        key = self.session.secret_key()
        bus = await self.session.bus()
        current = await self._current(bus)
        record = await connections.create(
            bus,
            key,
            name=name,
            connection_type=connection_type,
            details=details,
            workspace=current.name(),
        )
        return AsyncConnection(self, record)

    async def get_connection(self, name: str) -> AsyncConnection:
        """``ConnectionNotFound`` for an unknown name. Inside a task: only the connections
        added to the task's workspace; any other name is both ``PermissionDenied`` and
        ``ConnectionNotFound`` (the run cannot tell an unknown name from another workspace's
        connection)."""
        connections.check_name(name)
        granted = intask.connections()
        if granted is not None:
            found = granted.get("connections", {}).get(name)
            if found is None:
                workspace = granted.get("workspace", names.DEFAULT_WORKSPACE)
                raise ConnectionNotGranted(
                    f"read the connection {name!r}",
                    "this task run",
                    f"No connection of that name is added to this task's workspace "
                    f"{workspace!r}; add one there (get_workspace({workspace!r})."
                    f"add_connection({name!r})) from outside the task.",
                )
            return self._granted(found)
        bus = await self.session.bus()
        record = await connections.get(bus, name, prefer=self.current_name(bus))
        return AsyncConnection(self, record)

    def current_name(self, bus: Bus) -> str:
        """The current workspace's name, without a lookup (nor making it)."""
        return self._workspace or workspaces.current_default(bus)

    def _granted(self, found: dict[str, Any]) -> AsyncConnection:
        record = ConnectionRecord(
            name=found["name"],
            connection_type=found["connection_type"],
            details_token="",
            workspaces=list(found.get("workspaces", [])),
            created_at=datetime.fromisoformat(found["created_at"]),
        )
        return AsyncConnection(self, record, details=found["details"])

    async def list_connections(self) -> ConnectionList[AsyncConnection]:
        """Every connection, oldest first (inside a task: those of the task's workspace)."""
        granted = intask.connections()
        if granted is not None:
            found = granted.get("connections", {}).values()
            return ConnectionList(self._granted(c) for c in found)
        bus = await self.session.bus()
        return ConnectionList(AsyncConnection(self, r) for r in await connections.list_all(bus))

    # --- inside a task -----------------------------------------------------------------------
    def in_task(self) -> bool:
        return intask.in_task()

    def task_args(self) -> dict[str, Any]:
        return intask.task_args()


class Client:
    """The sync client (see ``AsyncClient``, also for the reference's keywords): the same
    methods, blocking, each bounded by ``request_timeout`` seconds when given. Connects on
    first use; a context manager; ``close()`` releases the connection and the background
    loop."""

    def __init__(
        self,
        url: str | None = None,
        workspace: str | None = None,
        *,
        api_endpoint: str | None = None,
        auth_endpoint: str | None = None,
        auth_type: str | None = None,
        interactive: bool | None = None,
        request_timeout: float | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds: str | None = None,
        settings: ConnectSettings | None = None,
    ) -> None:
        self._a = AsyncClient(
            url,
            workspace,
            api_endpoint=api_endpoint,
            auth_endpoint=auth_endpoint,
            auth_type=auth_type,
            interactive=interactive,
            request_timeout=request_timeout,
            user=user,
            password=password,
            token=token,
            creds=creds,
            settings=settings,
        )
        self._portal = Portal(
            on_close=self._a.close, timeout_s=self._a.request_timeout_s, guard=self._a.refusals
        )

    @property
    def url(self) -> str:
        return self._a.url

    @property
    def settings(self) -> ConnectSettings:
        return self._a.settings

    @property
    def aio(self) -> AsyncClient:
        """The async core (usable only on this client's loop, i.e. through the portal)."""
        return self._a

    def workspace(self) -> str:
        return self._a.workspace()

    def connect(self) -> Self:
        self._portal.call(self._a.connect)
        return self

    def close(self) -> None:
        self._portal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def upload_orchestration(
        self,
        bytes_buffer: bytes | bytearray | memoryview | BinaryIO | None = None,
        path: str | os.PathLike[str] | None = None,
        name: str | None = None,
        file_name: str | None = None,
    ) -> Orchestration:
        inner = self._portal.call(self._a.upload_orchestration, bytes_buffer, path, name, file_name)
        return Orchestration(inner, self._portal)

    def list_orchestrations(
        self,
        workspace_id: int | None = None,
        workspace_name: str | None = None,
        *,
        workspace: str | None = None,
    ) -> OrchestrationList[Orchestration]:
        found = self._portal.call(
            partial(self._a.list_orchestrations, workspace_id, workspace_name, workspace=workspace)
        )
        return OrchestrationList(Orchestration(o, self._portal) for o in found)

    def get_orchestration(self, id_or_name: str) -> Orchestration:
        return Orchestration(self._portal.call(self._a.get_orchestration, id_or_name), self._portal)

    def list_tasks(
        self,
        killed: bool = False,
        workspace_id: int | None = None,
        workspace_name: str | None = None,
        *,
        workspace: str | None = None,
    ) -> TaskList[Task]:
        found = self._portal.call(
            partial(self._a.list_tasks, killed, workspace_id, workspace_name, workspace=workspace)
        )
        return TaskList(Task(t, self._portal) for t in found)

    def get_task_by_id(self, task_id: str) -> Task:
        return Task(self._portal.call(self._a.get_task_by_id, task_id), self._portal)

    def list_workspaces(self) -> WorkspaceList[Workspace]:
        found = self._portal.call(self._a.list_workspaces)
        return WorkspaceList(Workspace(w, self._portal) for w in found)

    def create_workspace(self, name: str) -> Workspace:
        return Workspace(self._portal.call(self._a.create_workspace, name), self._portal)

    def get_workspace(self, name: str, create_if_not_exist: bool = False) -> Workspace:
        inner = self._portal.call(self._a.get_workspace, name, create_if_not_exist)
        return Workspace(inner, self._portal)

    def set_current_workspace(self, workspace: Workspace | AsyncWorkspace) -> Workspace:
        return Workspace(self._a.set_current_workspace(workspace), self._portal)

    def get_current_workspace(self) -> Workspace:
        return Workspace(self._portal.call(self._a.get_current_workspace), self._portal)

    def create_connection(
        self, name: str, connection_type: str, details: dict[str, Any]
    ) -> Connection:
        inner = self._portal.call(self._a.create_connection, name, connection_type, details)
        return Connection(inner, self._portal)

    def get_connection(self, name: str) -> Connection:
        if intask.connections() is not None:  # inside a task: a file, no loop needed
            return Connection(_now(self._a.get_connection(name)), self._portal)
        return Connection(self._portal.call(self._a.get_connection, name), self._portal)

    def list_connections(self) -> ConnectionList[Connection]:
        if intask.connections() is not None:
            found = _now(self._a.list_connections())
        else:
            found = self._portal.call(self._a.list_connections)
        return ConnectionList(Connection(c, self._portal) for c in found)

    def in_task(self) -> bool:
        return intask.in_task()

    def task_args(self) -> dict[str, Any]:
        return intask.task_args()


def _now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that does no I/O to its end, without an event loop (a task's
    connections come from a file: a run needs no portal thread to read them)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("expected a coroutine that completes without awaiting")
