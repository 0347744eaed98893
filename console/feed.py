"""The console's only link to NATS: connects, keeps ``ConsoleState`` live, runs actions.

``Feed.run()`` is started by the app as a worker on Textual's own asyncio loop (nats-py
callbacks then run on the UI loop: no threads). It retries until a server answers (the state
says ``down`` meanwhile, with the URL tried), then watches the four buckets. On a disconnect
the state says ``reconnecting``; on reconnect every watch and log tail is recreated, resuming
from the last sequence it saw. Screens call the action methods; they never touch NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import msgspec

from broker import catalog, names, scope
from broker.connection import Bus, connect
from broker.errors import NotConnected, PermissionDenied, TaskbusError
from broker.follow import EntryCallback, Follow, inspects_streams
from broker.models import (
    ConnectionRecord,
    ExecutorRecord,
    OrchestrationRecord,
    Record,
    RunRecord,
    TaskRecord,
    WorkspaceRecord,
    decode,
)
from broker.settings import ConnectSettings
from broker.turns import BUDGET_S
from console.format import display_url
from console.logdoc import LogDocument
from console.logtail import LogTail
from console.state import ConsoleState, Link

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)
T = TypeVar("T")

RETRY_S = 1.0  # between connection attempts while no server answers
RESTART_RETRY_S = 0.5  # between attempts to recreate watches after a reconnect
# An idle watch is cleaned up by the server after this long (it is recreated on reconnect).
INACTIVE_THRESHOLD_S = 300.0


class ActionError(TaskbusError):
    """An action from the console could not be done; the message says why."""


class Feed:
    def __init__(
        self, settings: ConnectSettings, state: ConsoleState, *, retry_s: float = RETRY_S
    ) -> None:
        self.settings = dataclasses.replace(settings, name="taskbus-console")
        self.state = state
        self.retry_s = retry_s
        self.bus: Bus | None = None
        self._watches: list[Follow] = []
        # Watches a credential may be refused (collection, watch): see ``_start_optional``.
        self._optional: list[tuple[str, Follow]] = []
        self._tails: set[LogTail] = set()
        self._restart: asyncio.Task[None] | None = None
        self._closing = False

    # --- life cycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Connect (retrying for ever), watch, and stay until cancelled."""
        try:
            self.bus = bus = await self._connect()
            bus.on_disconnect.append(self._on_disconnect)
            bus.on_reconnect.append(self._on_reconnect)
            self._watches = self._make_watches(bus)
            self._optional = self._make_optional_watches(bus)
            self._note_server()
            self.state.set_link(Link.CONNECTED)
            await self._restart_all()
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    def _note_server(self) -> None:
        """With several URLs configured, the header names the one in use."""
        bus = self.bus
        if bus is None or len(self.settings.urls) < 2:
            return
        connected = bus.nc.connected_url
        if connected is not None:
            self.state.server = display_url(connected.geturl())

    async def _connect(self) -> Bus:
        while True:
            self.state.attempts += 1
            try:
                return await connect(self.settings, reconnect_forever=True)
            except NotConnected as exc:
                self.state.set_link(Link.DOWN, _reason(str(exc)))
            except Exception as exc:  # e.g. JetStream not enabled there: say so, keep trying
                self.state.set_link(Link.DOWN, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.retry_s)

    def _watch(
        self,
        bus: Bus,
        collection: str,
        bucket: str,
        on_entry: EntryCallback,
        rest: str | None = ">",
    ) -> list[Follow]:
        """Current values of a bucket, then live changes, one O(1) callback each: one follow
        per workspace the credential may see (``broker.scope``; one for all when it may see
        every one), or of the whole bucket (``rest`` ""); loaded once every one is."""
        keys = [">"] if rest == "" else scope.filters(bus.creds, rest)
        waiting = set(range(len(keys)))
        if not waiting:
            self.state.mark_loaded(collection)

        def loaded(index: int) -> None:
            waiting.discard(index)
            if not waiting:
                self.state.mark_loaded(collection)

        return [
            Follow.bucket(
                bus.js,
                bucket,
                pattern,
                on_entry=on_entry,
                on_loaded=partial(loaded, index),
                on_reset=partial(self.state.reset, collection),
                inactive_threshold_s=INACTIVE_THRESHOLD_S,
                turns_budget_s=BUDGET_S,
                check_reset=inspects_streams(bus.creds),
            )
            for index, pattern in enumerate(keys)
        ]

    def _make_watches(self, bus: Bus) -> list[Follow]:
        state = self.state
        watch = partial(self._watch, bus)

        # Small buckets first: tasks paint before 100,000 runs have streamed in.
        return [
            *watch("tasks", names.TASKS, _decoder(TaskRecord, state.apply_task)),
            *watch("runs", names.RUNS, _decoder(RunRecord, state.apply_run)),
            *watch(
                "orchestrations",
                names.ORCHESTRATIONS,
                _decoder(OrchestrationRecord, state.apply_orchestration),
            ),
            *watch(
                "executors",
                names.EXECUTORS,
                _decoder(ExecutorRecord, state.apply_executor),
                rest="",
            ),
        ]

    def _make_optional_watches(self, bus: Bus) -> list[tuple[str, Follow]]:
        state = self.state
        watch = partial(self._watch, bus)

        workspaces = _decoder(WorkspaceRecord, state.apply_workspace)

        def on_workspace(key: str, value: bytes | None) -> None:
            if key not in (names.WORKSPACE_IDS, names.SCHEMA_KEY):  # no workspaces
                workspaces(key, value)

        return [
            *(("workspaces", w) for w in watch("workspaces", names.WORKSPACES, on_workspace, None)),
            *(
                ("connections", w)
                for w in watch(
                    "connections",
                    names.CONNECTIONS,
                    _decoder(ConnectionRecord, state.apply_connection),
                    "*",
                )
            ),
        ]

    async def _start_all(self) -> None:
        bus = self._require()
        for watch in self._watches:
            await watch.start()
        await self._start_optional(bus)
        for tail in list(self._tails):
            await tail.start(bus.js)

    async def _start_optional(self, bus: Bus) -> None:
        """Watch what this credential may be refused: a refusal is noted in the state (its
        view says so) and the rest of the console works on."""
        for collection, watch in self._optional:
            try:
                async with bus.refusals():
                    await watch.start()
                self.state.refused.pop(collection, None)
            except PermissionDenied as exc:
                log.info("not watching %s: %s", collection, exc)
                await watch.stop()
                self.state.refuse(collection, str(exc))

    async def _on_disconnect(self) -> None:
        if not self._closing:
            detail = self.bus.last_error if self.bus is not None else ""
            self.state.set_link(Link.RECONNECTING, detail)

    async def _on_reconnect(self) -> None:
        # Recreate outside nats-py's reconnect callback: the JetStream calls need the client's
        # read loop, which runs once this callback has returned.
        if self._restart is None or self._restart.done():
            self._restart = asyncio.create_task(self._restart_all())

    async def _restart_all(self) -> None:
        bus = self.bus
        while bus is not None and not self._closing:
            if not bus.connected:
                return  # the next reconnect starts over
            try:
                await self._start_all()
            except Exception as exc:  # JetStream still recovering after a restart
                log.info("recreating watches failed (%s); retrying", exc)
                self.state.set_link(Link.RECONNECTING, f"restoring watches: {exc}")
                await asyncio.sleep(RESTART_RETRY_S)
                continue
            self._note_server()
            self.state.set_link(Link.CONNECTED)
            return

    async def _shutdown(self) -> None:
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        bus, self.bus = self.bus, None
        if bus is None:
            return
        for watch in [*self._watches, *(w for _, w in self._optional)]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.stop(), 1.0)
        for tail in list(self._tails):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tail.stop(), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.nc.close(), 2.0)

    # --- what the header shows ----------------------------------------------------------
    def dropped(self) -> int:
        """Messages known lost: slow-consumer drops reported by nats-py, log sequence gaps."""
        bus_dropped = self.bus.dropped_messages if self.bus is not None else 0
        return bus_dropped + self.state.dropped + sum(t.doc.missing for t in self._tails)

    @property
    def last_error(self) -> str:
        return self.bus.last_error if self.bus is not None else self.state.link_detail

    # --- logs ---------------------------------------------------------------------------
    async def open_log(self, task_key: str, run_id: str, doc: LogDocument) -> LogTail:
        """Follow a run's logs into ``doc`` (``task_key``: ``TaskRecord.key``); while
        disconnected the tail starts on reconnect."""
        creds = self.bus.creds if self.bus is not None else None
        tail = LogTail(task_key, run_id, doc, check_reset=inspects_streams(creds))
        self._tails.add(tail)
        if self.bus is not None and self.bus.connected:
            await tail.start(self.bus.js)
        return tail

    async def close_log(self, tail: LogTail) -> None:
        self._tails.discard(tail)
        self.state.dropped += tail.doc.missing
        await tail.stop()

    # --- actions ------------------------------------------------------------------------
    def _require(self) -> Bus:
        if self.bus is None or not self.bus.connected:
            raise ActionError("Not connected to NATS right now; try again once reconnected.")
        return self.bus

    async def _refusable(self, bus: Bus, work: Awaitable[T]) -> T:
        """Run an action so that a refusal by the server raises ``PermissionDenied`` (naming
        what was refused) at once, not the refused request's timeout seconds later."""
        async with bus.refusals():
            return await work

    async def run_now(self, task: TaskRecord) -> RunRecord:
        bus = self._require()
        return await self._refusable(bus, catalog.run_now(bus, task))

    async def kill(self, task: TaskRecord) -> TaskRecord:
        bus = self._require()
        return await self._refusable(bus, catalog.set_task_flags(bus, task, killed=True))

    async def pause(self, task: TaskRecord) -> TaskRecord:
        bus = self._require()
        return await self._refusable(bus, catalog.set_task_flags(bus, task, paused=True))

    async def resume(self, task: TaskRecord) -> TaskRecord:
        bus = self._require()
        return await self._refusable(bus, catalog.set_task_flags(bus, task, paused=False))

    async def upload(
        self, path: str, name: str | None = None, workspace: str | None = None
    ) -> OrchestrationRecord:
        """Upload a zip from a local path into ``workspace`` (None: ``default``); errors say
        what is wrong with the path or zip, or what the server refused."""
        bus = self._require()
        file = await asyncio.to_thread(lambda: Path(path).expanduser())
        try:
            data = await asyncio.to_thread(file.read_bytes)
        except FileNotFoundError:
            raise ActionError(f"No file at {str(file)!r}: give the path of a .zip.") from None
        except IsADirectoryError:
            raise ActionError(f"{str(file)!r} is a directory: give the path of a .zip.") from None
        except OSError as exc:
            raise ActionError(f"Cannot read {str(file)!r}: {exc.strerror or exc}.") from None
        upload = catalog.upload_orchestration(
            bus, data, name=name or None, file_name=file.name, workspace=workspace or ""
        )
        return await self._refusable(bus, upload)


def _reason(message: str) -> str:
    """The cause inside a ``NotConnected`` message (the screen itself says what to run)."""
    head, _, rest = message.partition(": ")
    if head.startswith("Could not connect") and rest:
        return rest.split(". Start", 1)[0]
    return message


def _decoder(kind: type[R], apply: Callable[[str, R | None], None]) -> EntryCallback:
    def on_entry(key: str, value: bytes | None) -> None:
        if value is None:
            apply(key, None)
            return
        try:
            record = decode(kind, value)
        except msgspec.DecodeError as exc:
            log.warning("skipping undecodable %s %s: %s", kind.__name__, key, exc)
            return
        apply(key, record)

    return on_entry
