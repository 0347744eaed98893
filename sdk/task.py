"""Tasks (the orders given to an orchestration): getters, kill, pause/resume, runs and wait."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from broker import catalog, connections, cron, store, workspaces
from broker.errors import InvalidArgument, TaskNotFound, WaitTimeout
from broker.models import RunRecord, TaskRecord, utcnow
from broker.scope import adopt
from broker.status import TASK_TERMINAL, RunStatus, TaskKind, TaskStatus, task_status
from sdk import display
from sdk.lists import TaskRunList
from sdk.portal import Portal, closing
from sdk.run import AsyncTaskRun, TaskRun, check_limit
from sdk.session import refusing

if TYPE_CHECKING:
    from sdk.client import AsyncClient

RUN_FILTERS = ("all", *RunStatus)


def check_run_filter(status: object) -> str:
    """``"all"`` for None or ``"all"`` (every run, as in the reference), else a run status."""
    if status is None:
        return "all"
    if status not in RUN_FILTERS:
        raise InvalidArgument(
            f"status must be None or one of {', '.join(RUN_FILTERS)}; got {status!r}"
        )
    return str(status)


@refusing
class AsyncTask(display.Shown):
    """A task. Getters read the record (and runs) as last fetched; ``status()``, ``kill()``,
    ``pause()``, ``resume()`` and ``wait()`` fetch them again."""

    def __init__(
        self,
        client: AsyncClient,
        record: TaskRecord,
        runs: list[RunRecord] | None = None,
        *,
        mask: re.Pattern[str] | None = None,
    ) -> None:
        self._client = client
        self._record = record
        self._runs = runs or []  # newest first
        self._mask = mask  # finds its workspace's connection values (AsyncClient.secret_patterns)

    # --- data getters -----------------------------------------------------------------------
    def id(self) -> str:
        return self._record.id

    def name(self) -> str:
        return self._record.name

    def task_type(self) -> str:
        """``Temporary Run``, ``Scheduled Run`` or ``Continuous Run``."""
        return self._record.kind.label

    def active(self) -> bool:
        """False once the task is killed or (run once) finished."""
        return not self._record.killed and self._status() not in TASK_TERMINAL

    def schedule(self) -> str | None:
        """The cron string of a scheduled task; None for the others."""
        return self._record.schedule or None

    def tz(self) -> str:
        return self._record.tz

    def input_data(self) -> dict[str, Any]:
        """The task's ``json_args`` (a copy), its workspace's connection values masked (the
        run itself gets them as given: ``task_args()``)."""
        result: dict[str, Any] = connections.masked_values(
            json.loads(json.dumps(self._record.json_args)), self._mask
        )
        return result

    def orchestration(self) -> str:
        """The id of the orchestration this task runs."""
        return self._record.orchestration_id

    def workspace(self) -> str:
        """The workspace label as stored ("" for the default workspace)."""
        return self._record.workspace

    def workspace_name(self) -> str:
        return workspaces.name_of(self._record.workspace)

    async def workspace_id(self) -> int:
        """The workspace's int id (a lookup; ids never change)."""
        bus = await self._client.session.bus()
        return (await workspaces.get(bus.workspaces, self.workspace_name())).id

    def retries(self) -> int:
        """How many times a failed, timed-out or executor-lost run is retried."""
        return self._record.retries

    def pool(self) -> str:
        """The executor pool whose executors take this task's runs."""
        return self._record.pool

    def created_at(self) -> datetime:
        return self._record.created_at

    def updated_at(self) -> datetime:
        return self._record.updated_at

    def next_run_at(self) -> datetime | None:
        """When a scheduled task fires next (UTC); None for other tasks, or when paused or
        killed."""
        r = self._record
        if r.kind is not TaskKind.SCHEDULED or r.killed or r.paused or not r.schedule:
            return None
        return cron.next_fire(r.schedule, r.tz, utcnow())

    def _status(self) -> TaskStatus:
        return task_status(self._record, self._runs)

    # --- I/O ---------------------------------------------------------------------------------
    async def refresh(self) -> AsyncTask:
        bus = await self._client.session.bus()
        self._record = await catalog.get_task(bus, self._record)
        self._runs = await catalog.runs_of(bus, self._record)
        return self

    async def status(self) -> TaskStatus:
        """Always fresh: ``pending``, ``started``, ``success``, ``failed``, ``timed_out``,
        ``paused``, ``pending_kill`` or ``killed``."""
        bus = await self._client.session.bus()
        self._record = await catalog.get_task(bus, self._record)
        if self._record.kind is TaskKind.RUN_ONCE or self._record.killed:
            # Only these depend on runs (task_status); a busy schedule has thousands of them.
            self._runs = await catalog.runs_of(bus, self._record)
        return self._status()

    async def kill(self) -> TaskStatus:
        """Stop the schedule and any running run; ``TaskStatus.PENDING_KILL``."""
        bus = await self._client.session.bus()
        self._record = await catalog.set_task_flags(bus, self._record, killed=True)
        return TaskStatus.PENDING_KILL

    async def pause(self) -> AsyncTask:
        return await self._set_paused(True)

    async def resume(self) -> AsyncTask:
        return await self._set_paused(False)

    async def _set_paused(self, paused: bool) -> AsyncTask:
        if self._record.kind is TaskKind.RUN_ONCE:
            raise InvalidArgument(
                f"Task {self.name()!r} runs once: only scheduled and continuous tasks can be "
                f"paused or resumed (kill() stops a run-once task)."
            )
        bus = await self._client.session.bus()
        self._record = await catalog.set_task_flags(bus, self._record, paused=paused)
        if self._record.killed:
            raise InvalidArgument(
                f"Task {self.name()!r} ({self.id()}) was killed: a killed task cannot be "
                f"{'paused' if paused else 'resumed'}. Create a new task to run it again."
            )
        return self

    async def last_runs(
        self, limit: int | None = None, status: str | None = None
    ) -> TaskRunList[AsyncTaskRun]:
        """Runs newest first, at most ``limit``; only those with ``status`` unless it is None
        or ``"all"`` (a run status such as ``"skipped"``; else ``InvalidArgument``)."""
        wanted = check_run_filter(status)
        limit = check_limit(limit)
        bus = await self._client.session.bus()
        self._runs = await catalog.runs_of(bus, self._record)
        runs = [r for r in self._runs if wanted == "all" or r.status == wanted]
        if limit is not None:
            runs = runs[:limit]
        pending = any(r.status is RunStatus.PENDING for r in runs)
        served = await catalog.served_pools(bus) if pending else set()
        return TaskRunList(
            AsyncTaskRun(self._client, r, catalog.waiting_reason(r, served)) for r in runs
        )

    async def wait(self, timeout: float | None = None) -> TaskStatus:
        """Wait until the task reaches a final status (a run-once task's run ended, or the
        task was killed), watching its record and its runs; that status."""
        bus = await self._client.session.bus()
        task_id = self._record.id
        task_key = self._record.key
        runs: dict[str, RunRecord] = {}
        loaded: set[str] = set()
        outcome: list[TaskStatus | TaskNotFound] = []

        async def follow_task(scope: anyio.CancelScope) -> None:
            async with closing(store.watch(bus.tasks, TaskRecord, task_key, bus=bus)) as updates:
                async for key, record in updates:
                    if key and record is None:
                        outcome.append(TaskNotFound(f"Task {task_id} was deleted while waited on."))
                        scope.cancel()
                        return
                    if record is not None:
                        self._record = adopt(key, record) or self._record
                    else:
                        loaded.add("task")
                    check(scope)

        async def follow_runs(scope: anyio.CancelScope) -> None:
            pattern = f"{task_key}.*"
            async with closing(store.watch(bus.runs, RunRecord, pattern, bus=bus)) as updates:
                async for key, record in updates:
                    if record is not None:
                        runs[key] = adopt(key, record) or record
                    elif key:
                        runs.pop(key, None)
                    else:
                        loaded.add("runs")
                    check(scope)

        def check(scope: anyio.CancelScope) -> None:
            if len(loaded) < 2:
                return
            self._runs = sorted(runs.values(), key=lambda r: r.created_at, reverse=True)
            status = self._status()
            if status in TASK_TERMINAL:
                outcome.append(status)
                scope.cancel()

        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as group:
                    group.start_soon(follow_task, group.cancel_scope)
                    group.start_soon(follow_runs, group.cancel_scope)
        except TimeoutError:
            raise WaitTimeout(
                f"Task {self.name()!r} ({task_id}) is still {self._status()} after {timeout} s; "
                f"wait longer, or stop it with kill()."
            ) from None
        if isinstance(outcome[0], TaskNotFound):
            raise outcome[0]
        return outcome[0]

    def to_dict(self) -> dict[str, Any]:
        """The task as JSON-ready values, with its status and next run as last fetched."""
        data = display.jsonable(self._record)
        data.update(
            json_args=self.input_data(),
            status=str(self._status()),
            type=self.task_type(),
            active=self.active(),
            last_run_status=str(self._runs[0].status) if self._runs else None,
            next_run_at=display.iso(self.next_run_at(), none=None),
        )
        return data

    # --- display -----------------------------------------------------------------------------
    def _display(self) -> dict[str, str]:
        r = self._record
        next_run = self.next_run_at()
        return {
            "id": r.id,
            "name": r.name,
            "status": self._status(),
            "last run status": self._runs[0].status if self._runs else display.NONE,
            "type": r.kind.label,
            "active": str(self.active()),
            "schedule": r.schedule or display.NONE,
            "tz": r.tz,
            "next run at": display.iso(next_run),
            "orchestration": r.orchestration_id,
            "input data": json.dumps(self.input_data()),
            "timeout": display.NONE if r.timeout_s is None else f"{r.timeout_s} s",
            "retries": str(r.retries),
            "pool": r.pool,
            "created at": display.iso(r.created_at),
            "updated at": display.iso(r.updated_at),
            "workspace": workspaces.name_of(r.workspace),
        }


class Task(display.Shown):
    """A task (sync facade over ``AsyncTask``)."""

    def __init__(self, inner: AsyncTask, portal: Portal) -> None:
        self._a = inner
        self._portal = portal

    def id(self) -> str:
        return self._a.id()

    def name(self) -> str:
        return self._a.name()

    def task_type(self) -> str:
        return self._a.task_type()

    def active(self) -> bool:
        return self._a.active()

    def schedule(self) -> str | None:
        return self._a.schedule()

    def tz(self) -> str:
        return self._a.tz()

    def input_data(self) -> dict[str, Any]:
        return self._a.input_data()

    def orchestration(self) -> str:
        return self._a.orchestration()

    def workspace(self) -> str:
        return self._a.workspace()

    def workspace_name(self) -> str:
        return self._a.workspace_name()

    def workspace_id(self) -> int:
        return self._portal.call(self._a.workspace_id)

    def retries(self) -> int:
        return self._a.retries()

    def pool(self) -> str:
        return self._a.pool()

    def created_at(self) -> datetime:
        return self._a.created_at()

    def updated_at(self) -> datetime:
        return self._a.updated_at()

    def next_run_at(self) -> datetime | None:
        return self._a.next_run_at()

    def refresh(self) -> Task:
        self._portal.call(self._a.refresh)
        return self

    def status(self) -> TaskStatus:
        return self._portal.call(self._a.status)

    def kill(self) -> TaskStatus:
        return self._portal.call(self._a.kill)

    def pause(self) -> Task:
        self._portal.call(self._a.pause)
        return self

    def resume(self) -> Task:
        self._portal.call(self._a.resume)
        return self

    def last_runs(
        self, limit: int | None = None, status: str | None = None
    ) -> TaskRunList[TaskRun]:
        runs = self._portal.call(self._a.last_runs, limit, status)
        return TaskRunList(TaskRun(r, self._portal) for r in runs)

    def wait(self, timeout: float | None = None) -> TaskStatus:
        return self._portal.wait(self._a.wait, timeout)

    def to_dict(self) -> dict[str, Any]:
        return self._a.to_dict()

    def _display(self) -> dict[str, str]:
        return self._a._display()
