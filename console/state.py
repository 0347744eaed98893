"""Live state of the bus as the console sees it: plain dicts and counters, no Textual, no NATS.

The feed calls ``apply_*`` from NATS callbacks (O(1) each: store the record, update the task's
summary, bump a version). Screens poll ``version_of(...)`` from their timers and redraw only
when something they show changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from broker import names
from broker.catalog import waiting_reason
from broker.models import (
    ConnectionRecord,
    ExecutorRecord,
    OrchestrationRecord,
    RunRecord,
    TaskRecord,
    WorkspaceRecord,
)
from broker.scope import adopt
from broker.status import RUN_ACTIVE, TASK_TERMINAL, RunStatus, TaskStatus, task_status
from console.format import display_url


class Link(StrEnum):
    CONNECTING = "connecting"  # first attempt under way
    DOWN = "down"  # never connected yet: the console shows what to run, and retries
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # was connected; nats-py is reconnecting


class ExecutorHealth(StrEnum):
    ALIVE = "alive"
    STALE = "stale"  # a heartbeat or more missed
    LOST = "lost"  # silent for longer than the heartbeat TTL, or its key is gone


# An executor is stale after one and a half missed beats, lost after the bucket TTL.
STALE_AFTER_S = 1.5 * names.HEARTBEAT_INTERVAL_S
LOST_AFTER_S = names.EXECUTOR_TTL_S
# A lost executor stays listed this long, so an operator sees what vanished.
FORGET_LOST_AFTER_S = 3600.0

COLLECTIONS = ("tasks", "runs", "orchestrations", "executors")
# Watched too, but a credential may be refused them (a scheduler's may not read connections):
# the console then says so in their view instead of waiting for them.
OPTIONAL_COLLECTIONS = ("workspaces", "connections")


def workspace_name(label: str) -> str:
    """The workspace a record's ``workspace`` label puts it in ("" is ``default``)."""
    return label or names.DEFAULT_WORKSPACE


@dataclass
class TaskSummary:
    """What the task tables need from a task's runs, kept up to date incrementally."""

    newest: RunRecord | None = None
    active: dict[str, RunRecord] = field(default_factory=dict)
    status: TaskStatus = TaskStatus.PENDING


@dataclass
class ExecutorEntry:
    record: ExecutorRecord
    gone: bool = False  # its key was deleted or expired

    def health(self, now: datetime) -> ExecutorHealth:
        silent = (now - self.record.heartbeat_at).total_seconds()
        if self.gone or silent > LOST_AFTER_S:
            return ExecutorHealth.LOST
        if silent > STALE_AFTER_S:
            return ExecutorHealth.STALE
        return ExecutorHealth.ALIVE


class ConsoleState:
    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        # The server the header names (the one connected to, when several are configured).
        self.server = ", ".join(display_url(url) for url in self.urls)
        self.link = Link.CONNECTING
        self.link_detail = ""  # why the last connection attempt failed
        self.attempts = 0
        self.ever_connected = False
        self.tasks: dict[str, TaskRecord] = {}
        self.runs: dict[str, dict[str, RunRecord]] = {}  # task id -> run id -> record
        self.summaries: dict[str, TaskSummary] = {}
        self.orchestrations: dict[str, OrchestrationRecord] = {}
        self.executors: dict[str, ExecutorEntry] = {}
        self.workspaces: dict[str, WorkspaceRecord] = {}
        # Connections by identity (``ConnectionRecord.identity``: a connection has one
        # record per workspace it is added to, keyed ``<workspace>.<name>``; every copy lists
        # all its workspaces; two workspaces that cannot see each other may each have their
        # own of one name). Records only: the console never decrypts their details.
        self.connections: dict[str, ConnectionRecord] = {}
        self._connection_copies: dict[str, dict[str, ConnectionRecord]] = {}
        self._connection_of: dict[str, str] = {}  # KV key -> identity
        # Why a collection cannot be shown (the server refused this credential to read it).
        self.refused: dict[str, str] = {}
        # The workspace every view is narrowed to (None: all of them).
        self.workspace: str | None = None
        self.loaded: set[str] = set()
        self.run_count = 0
        # (created, key) of every run in the order the console first saw it; views keep a
        # cursor into it to insert new runs without re-sorting them all. Cleared (generation
        # bump) on reset.
        self.run_arrivals: list[tuple[float, str]] = []
        self.run_generation = 0
        self.run_removals = 0  # runs deleted so far (views drop their keys then)
        self.dropped = 0  # messages the console knows it missed (log sequence gaps)
        self.version = 0
        self._versions: dict[str, int] = dict.fromkeys(
            (*COLLECTIONS, *OPTIONAL_COLLECTIONS, "link", "workspace"), 0
        )
        self._task_versions: dict[str, int] = {}
        # Called (O(1)) after every change, so the visible screen can schedule a redraw.
        self.on_change: Callable[[], None] | None = None
        # nats-server's own line while its store is full ("": it is not). Only a server this
        # process runs can say (``taskbus up``); read when the status bar is drawn, from any
        # thread's latest value.
        self.store_full: Callable[[], str] = _no_store_problem

    # --- versions -----------------------------------------------------------------------
    def version_of(self, *collections: str) -> int:
        return sum(self._versions[name] for name in collections)

    def task_version(self, task_id: str) -> int:
        return self._task_versions.get(task_id, 0)

    def _touch(self, collection: str) -> None:
        self._versions[collection] += 1
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def _touch_task(self, task_id: str) -> None:
        self._task_versions[task_id] = self._task_versions.get(task_id, 0) + 1

    # --- connection ---------------------------------------------------------------------
    def set_link(self, link: Link, detail: str = "") -> None:
        if link is Link.CONNECTED:
            self.ever_connected = True
        self.link = link
        self.link_detail = detail
        self._touch("link")

    def mark_loaded(self, collection: str) -> None:
        self.loaded.add(collection)
        self._touch(collection)

    def reset(self, collection: str) -> None:
        """Forget a collection before a full reload (the server lost its store)."""
        self.loaded.discard(collection)
        if collection == "tasks":
            self.tasks.clear()
        elif collection == "runs":
            self.runs.clear()
            self.summaries.clear()
            self.run_count = 0
            self.run_arrivals.clear()
            self.run_generation += 1
        elif collection == "orchestrations":
            self.orchestrations.clear()
        elif collection == "executors":
            self.executors.clear()
        elif collection == "workspaces":
            self.workspaces.clear()
        elif collection == "connections":
            self.connections.clear()
            self._connection_copies.clear()
        self._touch(collection)

    def refuse(self, collection: str, reason: str) -> None:
        """The server refused this credential to read ``collection``."""
        self.refused[collection] = reason
        self._touch(collection)

    def set_workspace(self, name: str | None) -> None:
        """Narrow every view to one workspace (None: all)."""
        if name != self.workspace:
            self.workspace = name
            self._touch("workspace")

    def in_workspace(self, label: str) -> bool:
        """Whether a record labelled ``label`` is shown under the chosen workspace."""
        return self.workspace is None or workspace_name(label) == self.workspace

    def known_workspaces(self) -> list[str]:
        """Every workspace the console knows of: the workspaces bucket, and the labels of
        what it shows (a credential refused the bucket still switches), ``default`` first."""
        found = set(self.workspaces) | {names.DEFAULT_WORKSPACE}
        found.update(workspace_name(t.workspace) for t in self.tasks.values())
        found.update(workspace_name(o.workspace) for o in self.orchestrations.values())
        for connection in self.connections.values():
            found.update(connection.workspaces)
        return sorted(found, key=lambda n: (n != names.DEFAULT_WORKSPACE, n))

    # --- records ------------------------------------------------------------------------
    def apply_task(self, key: str, record: TaskRecord | None) -> None:
        """Tasks are keyed by their key (``TaskRecord.key``, workspace first), everywhere in
        the console: ids alone may repeat across workspaces."""
        if record is not None and (record := adopt(key, record)) is None:
            return
        if record is None:
            if self.tasks.pop(key, None) is None:
                return
        else:
            self.tasks[key] = record
            self._resummarize(key)
        self._touch("tasks")
        self._touch_task(key)

    def apply_orchestration(self, key: str, record: OrchestrationRecord | None) -> None:
        if record is not None and (record := adopt(key, record)) is None:
            return
        if record is None:
            if self.orchestrations.pop(key, None) is None:
                return
        else:
            self.orchestrations[key] = record
        self._touch("orchestrations")

    def apply_workspace(self, key: str, record: WorkspaceRecord | None) -> None:
        if record is None:
            if self.workspaces.pop(key, None) is None:
                return
        else:
            if key in (names.WORKSPACE_IDS, names.SCHEMA_KEY):
                return
            self.workspaces[key] = record
        self._touch("workspaces")

    def apply_connection(self, key: str, record: ConnectionRecord | None) -> None:
        before = self._connection_of.pop(key, None)
        if before is not None:
            copies = self._connection_copies[before]
            del copies[key]
            if copies:
                self.connections[before] = next(reversed(copies.values()))
            else:
                self.connections.pop(before, None)
                del self._connection_copies[before]
        elif record is None:
            return
        if record is not None:
            ident = record.identity
            self._connection_of[key] = ident
            self._connection_copies.setdefault(ident, {})[key] = record
            self.connections[ident] = record  # the newest copy lists every workspace
        self._touch("connections")

    def apply_executor(self, key: str, record: ExecutorRecord | None) -> None:
        if record is None:
            entry = self.executors.get(key)
            if entry is None:
                return
            entry.gone = True
        else:
            self.executors[key] = ExecutorEntry(record)
        self._touch("executors")

    def apply_run(self, key: str, record: RunRecord | None) -> None:
        if record is not None and (record := adopt(key, record)) is None:
            return
        task_id, _, run_id = key.rpartition(".")
        runs = self.runs.get(task_id)
        if record is None:
            if runs is None or runs.pop(run_id, None) is None:
                return
            self.run_count -= 1
            self.run_removals += 1
            self._resummarize(task_id, rescan=True)
        else:
            if runs is None:
                runs = self.runs[task_id] = {}
            if run_id not in runs:
                self.run_count += 1
                self.run_arrivals.append((record.created_at.timestamp(), key))
            runs[run_id] = record
            summary = self.summaries.get(task_id)
            if summary is None:
                summary = self.summaries[task_id] = TaskSummary()
            if record.status in RUN_ACTIVE:
                summary.active[run_id] = record
            else:
                summary.active.pop(run_id, None)
            newest = summary.newest
            if newest is None or newest.run_id == run_id or record.created_at > newest.created_at:
                summary.newest = record
            self._resummarize(task_id)
        self._touch("runs")
        self._touch_task(task_id)

    def active_runs_by_token(self) -> dict[str, tuple[str, str]]:
        """(task key, run id) of every pending or running run, by ``names.run_token`` (what
        executors' heartbeats list)."""
        return {
            names.run_token(f"{task_key}.{run_id}"): (task_key, run_id)
            for task_key, summary in self.summaries.items()
            for run_id in summary.active
        }

    def _resummarize(self, task_id: str, *, rescan: bool = False) -> None:
        summary = self.summaries.get(task_id)
        if summary is None:
            summary = self.summaries[task_id] = TaskSummary()
        if rescan:
            runs = self.runs.get(task_id, {})
            summary.active = {k: r for k, r in runs.items() if r.status in RUN_ACTIVE}
            summary.newest = max(runs.values(), key=lambda r: r.created_at, default=None)
        task = self.tasks.get(task_id)
        if task is None:
            return
        # task_status needs only the newest run and the active ones: same answer, O(1).
        sample = list(summary.active.values())
        if summary.newest is not None and summary.newest.run_id not in summary.active:
            sample.append(summary.newest)
        summary.status = task_status(task, sample)

    # --- queries ------------------------------------------------------------------------
    def summary(self, task_id: str) -> TaskSummary:
        return self.summaries.get(task_id) or TaskSummary()

    def status_of(self, task_id: str) -> TaskStatus:
        return self.summary(task_id).status

    def is_active(self, task_id: str) -> bool:
        """The SDK's ``active()``: false once killed or finished."""
        task = self.tasks.get(task_id)
        if task is None or task.killed:
            return False
        return self.status_of(task_id) not in TASK_TERMINAL

    def runs_of(self, task_id: str) -> list[RunRecord]:
        """Runs of one task, newest first."""
        runs = self.runs.get(task_id, {})
        return sorted(runs.values(), key=lambda r: r.created_at, reverse=True)

    def run(self, task_id: str, run_id: str) -> RunRecord | None:
        return self.runs.get(task_id, {}).get(run_id)

    def orchestration_name(self, key_or_id: str) -> str:
        """The name of an orchestration, by its key (``OrchestrationRecord.key``) or its id."""
        record = self.orchestrations.get(key_or_id) or next(
            (o for o in self.orchestrations.values() if o.id == key_or_id), None
        )
        return record.name if record is not None else key_or_id[:8]

    def task_name(self, task_id: str) -> str:
        task = self.tasks.get(task_id)
        return task.name if task is not None else task_id[:8]

    def run_reason(self, run: RunRecord) -> str:
        """The run's reason; a pending run whose pool no live executor serves says so
        (``catalog.waiting_reason``, derived from the heartbeats, never stored)."""
        if run.status is not RunStatus.PENDING:
            return run.reason
        served = {entry.record.pool for entry in self.executors.values() if not entry.gone}
        waiting = waiting_reason(run, served)
        return "; ".join(filter(None, (waiting, run.reason)))

    def forget_lost_executors(self, now: datetime) -> None:
        stale = [
            key
            for key, entry in self.executors.items()
            if (now - entry.record.heartbeat_at).total_seconds() > FORGET_LOST_AFTER_S
        ]
        for key in stale:
            del self.executors[key]
        if stale:
            self._touch("executors")


def _no_store_problem() -> str:
    return ""
