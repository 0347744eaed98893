"""Orchestrations (uploaded zips of code): getters, readiness, and creating tasks from them.

``run_once`` creates a run-once task through ``broker.catalog.create_task``, which requests its
run. next: ``broker.catalog``, then ``broker.dispatch`` (which lists the rest of the trace "a
run request becoming a process").
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import anyio

from broker import catalog, names, store, workspaces
from broker.errors import (
    InvalidJsonArgs,
    InvalidName,
    OrchestrationNotFound,
    OrchestrationNotReady,
    WrongArgumentType,
)
from broker.models import OrchestrationRecord
from broker.scope import adopt
from broker.status import OrchestrationStatus, TaskKind
from sdk import display
from sdk.lists import TaskList
from sdk.portal import Portal, closing
from sdk.session import refusing
from sdk.task import AsyncTask, Task

if TYPE_CHECKING:
    from sdk.client import AsyncClient


def check_name(name: object, what: str = "task") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidName(f"The {what} name must be a non-empty string, not {name!r}")
    return name


def check_json_args_limits(json_args: object) -> None:
    """json_args shallow and small enough to travel (``names.MAX_JSON_ARGS_*``), checked
    without recursion before anything encodes them; what is not a JSON object is left to the
    catalog's check, which names the bad value."""
    stack: list[tuple[object, int]] = [(json_args, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > names.MAX_JSON_ARGS_DEPTH:
            raise InvalidJsonArgs(
                f"json_args are nested more than {names.MAX_JSON_ARGS_DEPTH} levels deep; "
                f"flatten them."
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    try:
        size = len(json.dumps(json_args, allow_nan=False).encode())
    except (TypeError, ValueError):
        return
    if size > names.MAX_JSON_ARGS_BYTES:
        raise InvalidJsonArgs(
            f"json_args are {size} bytes as JSON; at most {names.MAX_JSON_ARGS_BYTES} are "
            f"allowed (they travel in every run request). Pass a reference instead: a path, URL "
            f"or key the task reads its data from."
        )


class RunOptions(TypedDict, total=False):
    """The keyword-only options of every ``run_*`` beyond the reference (API.md)."""

    retries: int
    retry_delay_s: float
    pool: str
    memory_limit: str | int | None
    cpu_limit: float | None


_SPEC_KEYS = {"json_args", "timeout", "debug", "schedule", "tz", "overlap", "missed",
              *RunOptions.__annotations__}  # fmt: skip


@refusing
class AsyncOrchestration(display.Shown):
    """An uploaded orchestration. Getters read the record as last fetched; ``status()`` and
    ``wait_until_ready()`` fetch it again."""

    def __init__(self, client: AsyncClient, record: OrchestrationRecord) -> None:
        self._client = client
        self._record = record

    def id(self) -> str:
        return self._record.id

    def name(self) -> str:
        return self._record.name

    def file_name(self) -> str:
        return self._record.file_name

    def sha(self) -> str:
        """The full sha256 of the zip."""
        return self._record.sha

    def error(self) -> str:
        """The packaging error ("" unless the status is ``error``)."""
        return self._record.error

    def created_at(self) -> datetime:
        return self._record.created_at

    def updated_at(self) -> datetime:
        return self._record.updated_at

    def workspace(self) -> str:
        """The workspace label as stored ("" for the default workspace)."""
        return self._record.workspace

    def workspace_name(self) -> str:
        return workspaces.name_of(self._record.workspace)

    async def workspace_id(self) -> int:
        """The workspace's int id (a lookup; ids never change)."""
        bus = await self._client.session.bus()
        return (await workspaces.get(bus.workspaces, self.workspace_name())).id

    async def refresh(self) -> AsyncOrchestration:
        bus = await self._client.session.bus()
        self._record = await catalog.reload_orchestration(bus, self._record)
        return self

    async def status(self) -> OrchestrationStatus:
        """Always fresh: ``pending_packaging``, ``packaging``, ``ready`` or ``error``."""
        await self.refresh()
        return self._record.status

    async def list_tasks(self) -> TaskList[AsyncTask]:
        """The tasks created from this orchestration, newest change first."""
        tasks = await self._client.list_tasks()
        return TaskList(t for t in tasks if t.orchestration() == self._record.id)

    async def delete(self) -> None:
        """Delete the orchestration (its zip too, unless another upload shares it)."""
        bus = await self._client.session.bus()
        await catalog.delete_orchestration(bus, self._record)

    async def wait_until_ready(self, timeout: float | None = None) -> AsyncOrchestration:
        """Return once packaging is done; ``OrchestrationNotReady`` with the packaging error
        if it failed, or if ``timeout`` seconds pass first."""
        bus = await self._client.session.bus()
        try:
            with anyio.fail_after(timeout):
                key = self._record.key
                updates = store.watch(bus.orchestrations, OrchestrationRecord, key, bus=bus)
                async with closing(updates):
                    async for changed, record in updates:
                        if changed and record is None:
                            raise OrchestrationNotFound(
                                f"Orchestration {self.name()!r} was deleted while waiting for it."
                            )
                        if record is None:
                            continue
                        self._record = record = adopt(key, record) or self._record
                        if record.status is OrchestrationStatus.READY:
                            return self
                        if record.status is OrchestrationStatus.ERROR:
                            raise OrchestrationNotReady(
                                f"Orchestration {record.name!r} failed packaging: {record.error}"
                            )
        except TimeoutError:
            raise OrchestrationNotReady(
                f"Orchestration {self.name()!r} is still {self._record.status} after {timeout} s; "
                f"is an executor running (`taskbus executor`, or `taskbus up`)?"
            ) from None
        raise AssertionError("a KV watch does not end")

    async def _create(self, name: str, kind: TaskKind, **spec: Any) -> AsyncTask:
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise WrongArgumentType(
                f"run_* got unexpected keyword argument(s) {', '.join(unknown)}; the options "
                f"are {', '.join(sorted(RunOptions.__annotations__))}"
            )
        check_name(name)
        check_json_args_limits(spec.get("json_args"))
        bus = await self._client.session.bus()
        record = await catalog.create_task(bus, self._record, name=name, kind=kind, **spec)
        runs = await catalog.runs_of(bus, record) if kind is TaskKind.RUN_ONCE else []
        return await self._client.task_of(bus, record, runs)

    async def run_once(
        self,
        name: str | None = None,
        json_args: dict[str, Any] | None = None,
        timeout: int | None = None,
        debug: bool = False,
        **options: Unpack[RunOptions],
    ) -> AsyncTask:
        """Run once now (as soon as the orchestration is ready). ``name`` defaults to the
        orchestration's (the reference allows None); ``json_args`` must be a JSON object
        (``{}`` when None); ``timeout`` in whole seconds. Keyword-only options (every
        ``run_*``): ``retries=0`` and ``retry_delay_s=10`` (a failed, timed-out or
        executor-lost attempt is retried, each retry waiting twice as long as the one before;
        a killed one never), ``pool="default"`` (only executors of that pool take the runs),
        ``memory_limit`` (``"2GiB"``) and ``cpu_limit`` (``1.5``)."""
        return await self._create(
            self._record.name if name is None else name,
            TaskKind.RUN_ONCE,
            json_args=json_args,
            timeout=timeout,
            debug=debug,
            **options,
        )

    async def run_scheduled(
        self,
        name: str,
        schedule: str,
        json_args: dict[str, Any] | None = None,
        timeout: int | None = None,
        debug: bool = False,
        *,
        tz: str = "UTC",
        overlap: str = "allow",
        missed: str = "latest",
        **options: Unpack[RunOptions],
    ) -> AsyncTask:
        """Run on a cron ``schedule`` in zone ``tz``; ``timeout`` applies to each run;
        ``overlap`` is ``allow``, ``forbid`` or ``replace``; ``missed`` is ``latest``,
        ``skip`` or ``all``; the other options as for ``run_once``."""
        return await self._create(
            name,
            TaskKind.SCHEDULED,
            json_args=json_args,
            timeout=timeout,
            debug=debug,
            schedule=schedule,
            tz=tz,
            overlap=overlap,
            missed=missed,
            **options,
        )

    async def run_continuously(
        self,
        name: str,
        json_args: dict[str, Any] | None = None,
        debug: bool = False,
        **options: Unpack[RunOptions],
    ) -> AsyncTask:
        """Start a new run after each one ends (with back-off on failures) until killed; the
        options as for ``run_once`` (a retried run's chain goes on after its last attempt)."""
        return await self._create(
            name, TaskKind.CONTINUOUS, json_args=json_args, debug=debug, **options
        )

    def to_dict(self) -> dict[str, Any]:
        """The orchestration as JSON-ready values, as last fetched."""
        return display.jsonable(self._record)

    def _display(self) -> dict[str, str]:
        r = self._record
        return {
            "id": r.id,
            "name": r.name,
            "status": r.status,
            "filename": r.file_name,
            "sha": display.short_sha(r.sha),
            "created at": display.iso(r.created_at),
            "updated at": display.iso(r.updated_at),
            "workspace": workspaces.name_of(r.workspace),
            "error": r.error or display.NONE,
        }


class Orchestration(display.Shown):
    """An uploaded orchestration (sync facade over ``AsyncOrchestration``)."""

    def __init__(self, inner: AsyncOrchestration, portal: Portal) -> None:
        self._a = inner
        self._portal = portal

    def id(self) -> str:
        return self._a.id()

    def name(self) -> str:
        return self._a.name()

    def file_name(self) -> str:
        return self._a.file_name()

    def sha(self) -> str:
        return self._a.sha()

    def error(self) -> str:
        return self._a.error()

    def created_at(self) -> datetime:
        return self._a.created_at()

    def updated_at(self) -> datetime:
        return self._a.updated_at()

    def workspace(self) -> str:
        return self._a.workspace()

    def workspace_name(self) -> str:
        return self._a.workspace_name()

    def workspace_id(self) -> int:
        return self._portal.call(self._a.workspace_id)

    def refresh(self) -> Orchestration:
        self._portal.call(self._a.refresh)
        return self

    def status(self) -> OrchestrationStatus:
        return self._portal.call(self._a.status)

    def list_tasks(self) -> TaskList[Task]:
        return TaskList(Task(t, self._portal) for t in self._portal.call(self._a.list_tasks))

    def delete(self) -> None:
        self._portal.call(self._a.delete)

    def wait_until_ready(self, timeout: float | None = None) -> Orchestration:
        self._portal.wait(self._a.wait_until_ready, timeout)
        return self

    def run_once(
        self,
        name: str | None = None,
        json_args: dict[str, Any] | None = None,
        timeout: int | None = None,
        debug: bool = False,
        **options: Unpack[RunOptions],
    ) -> Task:
        return self._task(partial(self._a.run_once, name, json_args, timeout, debug, **options))

    def run_scheduled(
        self,
        name: str,
        schedule: str,
        json_args: dict[str, Any] | None = None,
        timeout: int | None = None,
        debug: bool = False,
        *,
        tz: str = "UTC",
        overlap: str = "allow",
        missed: str = "latest",
        **options: Unpack[RunOptions],
    ) -> Task:
        return self._task(
            partial(
                self._a.run_scheduled,
                *(name, schedule, json_args, timeout, debug),
                tz=tz,
                overlap=overlap,
                missed=missed,
                **options,
            )
        )

    def run_continuously(
        self,
        name: str,
        json_args: dict[str, Any] | None = None,
        debug: bool = False,
        **options: Unpack[RunOptions],
    ) -> Task:
        return self._task(partial(self._a.run_continuously, name, json_args, debug, **options))

    def to_dict(self) -> dict[str, Any]:
        return self._a.to_dict()

    def _task(self, create: Callable[[], Awaitable[AsyncTask]]) -> Task:
        return Task(self._portal.call(create), self._portal)

    def _display(self) -> dict[str, str]:
        return self._a._display()
