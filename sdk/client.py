"""The clients: ``AsyncClient`` (the async core on nats-py) and ``Client`` (its sync facade,
running the core on a background event loop through an anyio blocking portal)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import anyio

from broker import catalog, names
from broker.connection import Bus, connect, refusals
from broker.errors import InvalidArgument, OrchestrationMissingFile, WrongArgumentType
from broker.settings import ConnectSettings
from sdk import intask
from sdk.lists import OrchestrationList, TaskList
from sdk.orchestration import AsyncOrchestration, Orchestration, check_name
from sdk.portal import Portal
from sdk.task import AsyncTask, Task

# Closing drains the connection (pending publishes reach the server); bounded so a client
# whose server is gone still closes promptly.
CLOSE_TIMEOUT_S = 5.0


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
        self._workspace = workspace
        self._bus: Bus | None = None
        self._refusal_hooks: list[Callable[[str], None]] = []
        self._lock: asyncio.Lock | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return ",".join(self._settings.urls)

    @property
    def settings(self) -> ConnectSettings:
        return self._settings

    def workspace(self) -> str:
        """The workspace new orchestrations go to ("" for none)."""
        return self._workspace

    async def connect(self) -> Self:
        """Connect now (``NotConnected`` names the URL and how to start a server)."""
        await self._connected()
        return self

    async def _connected(self) -> Bus:
        if self._bus is not None:
            return self._bus
        if self._closed:
            raise RuntimeError("This client is closed; create a new one.")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._bus is None:
                self._bus = await connect(self._settings)
                self._bus.on_refusal.append(self._on_refusal)
        return self._bus

    def refusals(self) -> AbstractAsyncContextManager[None]:
        """While inside, an action the server refuses raises ``PermissionDenied`` at once
        (also when the connection is made inside)."""
        return refusals(self._refusal_hooks, self._refusal)

    def _refusal(self, subject: str) -> Exception:
        assert self._bus is not None  # a refusal comes from a connection
        return self._bus.refusal(subject)

    def _on_refusal(self, subject: str) -> None:
        for hook in list(self._refusal_hooks):
            hook(subject)

    async def close(self) -> None:
        self._closed = True
        bus, self._bus = self._bus, None
        if bus is not None:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await bus.close()

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
        bus = await self._connected()
        record = await catalog.upload_orchestration(
            bus, data, name=name, file_name=file_name, workspace=self._workspace
        )
        return AsyncOrchestration(self, record)

    async def list_orchestrations(
        self, workspace: str | None = None
    ) -> OrchestrationList[AsyncOrchestration]:
        """Every orchestration (of ``workspace`` when given), oldest first."""
        bus = await self._connected()
        records = await catalog.list_orchestrations(bus, workspace)
        return OrchestrationList(AsyncOrchestration(self, r) for r in records)

    async def get_orchestration(self, id_or_name: str) -> AsyncOrchestration:
        """By id, else the newest upload with that name (``OrchestrationNotFound``)."""
        check_name(id_or_name, "orchestration id or")
        bus = await self._connected()
        return AsyncOrchestration(self, await catalog.get_orchestration(bus, id_or_name))

    # --- tasks -------------------------------------------------------------------------------
    async def list_tasks(
        self, killed: bool = False, workspace: str | None = None
    ) -> TaskList[AsyncTask]:
        """``killed=False``: every task; ``True``: only killed ones. Newest change first."""
        bus = await self._connected()
        tasks, runs = await asyncio.gather(catalog.list_tasks(bus), catalog.all_runs(bus))
        chosen = [
            t
            for t in tasks
            if (not killed or t.killed) and (workspace is None or t.workspace == workspace)
        ]
        chosen.sort(key=lambda t: t.updated_at, reverse=True)
        return TaskList(AsyncTask(self, t, runs.get(t.id, [])) for t in chosen)

    async def get_task_by_id(self, task_id: str) -> AsyncTask:
        """``ValueError`` for a malformed id, ``TaskNotFound`` for an unknown one."""
        catalog.check_id(task_id)
        bus = await self._connected()
        record = await catalog.get_task(bus, task_id)
        return AsyncTask(self, record, await catalog.runs_of(bus, record.id))

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

    def list_orchestrations(self, workspace: str | None = None) -> OrchestrationList[Orchestration]:
        found = self._portal.call(self._a.list_orchestrations, workspace)
        return OrchestrationList(Orchestration(o, self._portal) for o in found)

    def get_orchestration(self, id_or_name: str) -> Orchestration:
        return Orchestration(self._portal.call(self._a.get_orchestration, id_or_name), self._portal)

    def list_tasks(self, killed: bool = False, workspace: str | None = None) -> TaskList[Task]:
        found = self._portal.call(self._a.list_tasks, killed, workspace)
        return TaskList(Task(t, self._portal) for t in found)

    def get_task_by_id(self, task_id: str) -> Task:
        return Task(self._portal.call(self._a.get_task_by_id, task_id), self._portal)

    def in_task(self) -> bool:
        return intask.in_task()

    def task_args(self) -> dict[str, Any]:
        return intask.task_args()
