"""Task runs (the executions of a task): getters, logs (read or follow) and wait.

``logs`` reads through ``broker.logs`` (``read``/``tail``, and ``follow`` for live lines); the
sync ``TaskRun`` runs the same iterator on the client's portal. The last hop of the SDK's side
of the trace "a print() reaching the console and the SDK" (listed in ``executor.logstream``);
``sdk.cli.commands`` prints these lines for ``taskbus logs``.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio

from broker import catalog, logs, store
from broker.errors import InvalidArgument, WaitTimeout
from broker.models import RunRecord
from broker.scope import adopt
from broker.status import RUN_TERMINAL, RunStatus
from broker.text import LOG_KEEP, printable
from sdk import display
from sdk.portal import Portal, closing
from sdk.session import refusing

if TYPE_CHECKING:
    from sdk.client import AsyncClient


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidArgument(f"limit must be a whole number >= 0 or None, not {limit!r}")
    return limit


class TaskRunLogs(list[str]):
    """A run's log lines, each ``"<ISO-8601 time with zone> <message>"``, in order."""

    def __repr__(self) -> str:
        # The items stay as written (data); their terminal form escapes control characters.
        lines = (printable(line, keep=LOG_KEEP) for line in self)
        return "\n".join(lines) if self else "(no logs yet)"

    def __str__(self) -> str:
        return self.__repr__()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.__repr__())}</pre>"


@refusing
class AsyncTaskRun(display.Shown):
    """One run of a task. ``status()`` is always fresh; the other getters read the record as
    last fetched, which ``refresh()``, ``status()`` and ``wait()`` fetch again."""

    def __init__(self, client: AsyncClient, record: RunRecord, waiting: str = "") -> None:
        self._client = client
        self._record = record
        self._waiting = waiting  # why a pending run has not started, derived when read

    def id(self) -> str:
        return self._record.run_id

    def task_id(self) -> str:
        return self._record.task_id

    async def status(self) -> RunStatus:
        """Always fresh (the record is fetched again)."""
        await self.refresh()
        return self._record.status

    def attempt(self) -> int:
        return self._record.attempt

    def executor(self) -> str:
        return self._record.executor

    def exit_code(self) -> int | None:
        return self._record.exit_code

    def reason(self) -> str:
        """Why the run ended as it did; for a pending run, why it has not started (e.g.
        ``waiting: no executor serves pool 'gpu'``), as of the last fetch."""
        reason = self._record.reason
        if self._waiting and self._record.status is RunStatus.PENDING:
            return f"{self._waiting}; {reason}" if reason else self._waiting
        return reason

    def created_at(self) -> datetime:
        return self._record.created_at

    def started_at(self) -> datetime | None:
        return self._record.started_at

    def finished_at(self) -> datetime | None:
        return self._record.finished_at

    def updated_at(self) -> datetime:
        return self._record.updated_at or self._record.created_at

    @property
    def _key(self) -> str:
        return self._record.key

    async def refresh(self) -> AsyncTaskRun:
        bus = await self._client.session.bus()
        found = await store.get(bus.runs, self._key, RunRecord)
        if found is not None:
            self._record = adopt(self._key, found[0]) or self._record
        pending = self._record.status is RunStatus.PENDING
        served = await catalog.served_pools(bus) if pending else set()
        self._waiting = catalog.waiting_reason(self._record, served)
        return self

    @overload
    def logs(
        self, limit: int | None = None, *, follow: Literal[False] = False
    ) -> Coroutine[Any, Any, TaskRunLogs]: ...
    @overload
    def logs(self, limit: int | None = None, *, follow: Literal[True]) -> AsyncIterator[str]: ...
    def logs(
        self, limit: int | None = None, *, follow: bool = False
    ) -> Coroutine[Any, Any, TaskRunLogs] | AsyncIterator[str]:
        """``await run.logs(limit)``: the stored lines (the last ``limit``);
        ``async for line in run.logs(follow=True)``: history, then live lines until the run
        ends (with ``limit``, history starts at the last ``limit`` lines)."""
        limit = check_limit(limit)
        if follow:
            return self._follow(limit)
        return self._read(limit)

    async def _read(self, limit: int | None) -> TaskRunLogs:
        bus = await self._client.session.bus()
        if limit is None:
            lines = await logs.read(bus, self._record)
        else:  # the last lines only, without reading a long log from its start
            lines = await logs.tail(bus, self._record, limit)
        return TaskRunLogs(logs.format_line(line) for line in lines)

    async def _follow(self, limit: int | None) -> AsyncIterator[str]:
        bus = await self._client.session.bus()
        last_seq = 0
        if limit is not None:
            # At least the last line, to know where live lines start (limit=0: only new ones).
            history = await logs.tail(bus, self._record, max(limit, 1))
            for line in history[len(history) - limit :] if limit else []:
                yield logs.format_line(line)
            last_seq = history[-1].seq if history else 0
        async with closing(logs.follow(bus, self._record)) as lines:
            async for line in lines:
                if line.seq > last_seq:
                    yield logs.format_line(line)

    async def wait(self, timeout: float | None = None) -> RunStatus:
        """Wait until the run ends (watching its record); its final status."""
        bus = await self._client.session.bus()
        try:
            with anyio.fail_after(timeout):
                async with closing(store.watch(bus.runs, RunRecord, self._key, bus=bus)) as updates:
                    async for _key, record in updates:
                        if record is None:
                            continue
                        self._record = adopt(self._key, record) or self._record
                        record = self._record
                        if record.status in RUN_TERMINAL:
                            return record.status
        except TimeoutError:
            raise WaitTimeout(
                f"Run {self.id()} is still {self._record.status} after {timeout} s; wait "
                f"longer, or kill its task with Task.kill()."
            ) from None
        raise AssertionError("a KV watch does not end")

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready values (times as ISO-8601 strings)."""
        return display.jsonable(self._record)

    def _display(self) -> dict[str, str]:
        r = self._record
        return {
            "task id": r.task_id,
            "run id": r.run_id,
            "status": r.status,
            "attempt": str(r.attempt),
            "executor": r.executor or display.NONE,
            "exit code": display.NONE if r.exit_code is None else str(r.exit_code),
            "reason": self.reason() or display.NONE,
            "created at": display.iso(r.created_at),
            "started at": display.iso(r.started_at),
            "finished at": display.iso(r.finished_at),
            "updated at": display.iso(r.updated_at or r.created_at),
        }


class TaskRun(display.Shown):
    """One run of a task (sync facade over ``AsyncTaskRun``)."""

    def __init__(self, inner: AsyncTaskRun, portal: Portal) -> None:
        self._a = inner
        self._portal = portal

    def id(self) -> str:
        return self._a.id()

    def task_id(self) -> str:
        return self._a.task_id()

    def status(self) -> RunStatus:
        return self._portal.call(self._a.status)

    def attempt(self) -> int:
        return self._a.attempt()

    def executor(self) -> str:
        return self._a.executor()

    def exit_code(self) -> int | None:
        return self._a.exit_code()

    def reason(self) -> str:
        return self._a.reason()

    def created_at(self) -> datetime:
        return self._a.created_at()

    def started_at(self) -> datetime | None:
        return self._a.started_at()

    def finished_at(self) -> datetime | None:
        return self._a.finished_at()

    def updated_at(self) -> datetime:
        return self._a.updated_at()

    def refresh(self) -> TaskRun:
        self._portal.call(self._a.refresh)
        return self

    @overload
    def logs(self, limit: int | None = None, follow: Literal[False] = False) -> TaskRunLogs: ...
    @overload
    def logs(self, limit: int | None = None, *, follow: Literal[True]) -> Iterator[str]: ...
    def logs(self, limit: int | None = None, follow: bool = False) -> TaskRunLogs | Iterator[str]:
        """The stored lines (the last ``limit``), or with ``follow=True`` an iterator of
        history then live lines until the run ends."""
        if follow:
            return self._portal.iterate(self._a.logs(limit, follow=True))
        return self._portal.call(self._a._read, check_limit(limit))

    def wait(self, timeout: float | None = None) -> RunStatus:
        return self._portal.wait(self._a.wait, timeout)

    def to_dict(self) -> dict[str, Any]:
        return self._a.to_dict()

    def _display(self) -> dict[str, str]:
        return self._a._display()
