"""Connections for runs (encrypted at rest, the key only on executors): decrypted here, handed
to a run as a private file, and masked out of its log lines.

The executor holds the operator's key (``TASKBUS_SECRET_KEY``, taken out of its own
environment as soon as it is read so that no run inherits it, else ``<data dir>/auth/
secret.key``) and keeps every connection decrypted in memory from a KV watch started with the
daemon: a run's start costs no request. For each run it writes the connections of the run's
workspace (its orchestration's) to a 0600 file next to the arguments file, named by
``TASKBUS_CONNECTIONS_FILE``; the SDK inside the task reads it, without the key and without
the bus. Every line the run logs is masked for the secret values of its workspace's
connections before it is published.

A workspace with a connection this executor cannot decrypt (no key, or not the key it was
stored with) fails its runs with a reason that says so — never a traceback, never plain text.

Hooks (kept small for the run path's owners to re-apply):
- ``executor.daemon``: ``Secrets.from_environment`` before the base environment is copied;
  ``watch`` in the services group; ``wait_ready`` before work is taken.
- ``executor.runner``: ``attach`` on the run's LogStream, ``write_run_file`` next to the
  arguments file (``SecretsUnavailable`` fails the run), ``run_env``, ``remove_run_file``.
- ``executor.logstream``: ``LogStream.mask`` applied to lines as they are added.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors

from broker import connections, names, store, workspaces
from broker.connection import Bus
from broker.errors import SecretKeyError, TaskbusError
from broker.models import ConnectionRecord, OrchestrationRecord
from broker.secret_key import SecretKey

log = logging.getLogger(__name__)

READY_WAIT_S = 10.0  # at start, how long the first listing of connections may take
Mask = Callable[[list[str]], list[str]]


class SecretsUnavailable(TaskbusError):
    """This executor cannot give a run its workspace's connections (the run fails)."""


class Secrets:
    """Every connection, decrypted, by workspace; kept live by ``watch``."""

    def __init__(self, bus: Bus, key: SecretKey | None, key_error: str = "") -> None:
        self._bus = bus
        self._key = key
        self._key_error = key_error
        self._records: dict[str, ConnectionRecord] = {}  # KV key "<ws>.<name>" → record
        self._details: dict[str, dict[str, Any]] = {}  # KV key → decrypted details
        self._failures: dict[str, str] = {}  # KV key → why it does not decrypt
        self._patterns: dict[str, re.Pattern[str] | None] = {}  # workspace → mask pattern
        self._ready = asyncio.Event()
        self._unavailable = ""

    @classmethod
    def from_environment(cls, bus: Bus) -> Secrets:
        """Load the key; ``TASKBUS_SECRET_KEY`` leaves this process's environment (and so
        every run's) as soon as it is read."""
        try:
            key, error = SecretKey.load(), ""
        except SecretKeyError as exc:
            key, error = None, str(exc)
        os.environ.pop(names.ENV_SECRET_KEY, None)
        if key is None:
            log.info("no secret key: runs of workspaces with connections will fail (%s)", error)
        return cls(bus, key, error)

    # --- the live view -----------------------------------------------------------------------
    async def watch(self) -> None:
        """Follow the connections bucket for ever (recreated after reconnects). A watch the
        server refuses outright (no such bucket) fails runs with the reason, not the
        executor."""
        try:
            await self._follow()
        except (nats.errors.Error, TimeoutError) as exc:
            self._unavailable = f"the executor cannot watch {names.CONNECTIONS} ({exc!r})"
            self._ready.set()
            log.error("%s", self._unavailable)

    async def _follow(self) -> None:
        updates = store.watch(self._bus.connections, ConnectionRecord, ">", bus=self._bus)
        async for key, record in updates:
            if not key:
                self._ready.set()
                self._unavailable = ""
                continue
            if record is None:
                self._records.pop(key, None)
                self._details.pop(key, None)
                self._failures.pop(key, None)
            else:
                self._records[key] = record
                self._decrypt(key, record)
            self._patterns.pop(connections.workspace_of(key), None)

    async def wait_ready(self) -> None:
        """Until the first listing is in (bounded: a refused or silent watch makes runs
        fail with the reason instead of stopping the executor)."""
        try:
            await asyncio.wait_for(self._ready.wait(), READY_WAIT_S)
        except TimeoutError:
            self._unavailable = (
                f"the executor could not list connections within {READY_WAIT_S:.0f} s "
                f"(does its credential allow reading {names.CONNECTIONS}?)"
            )
            log.error("%s", self._unavailable)

    def _decrypt(self, key: str, record: ConnectionRecord) -> None:
        """Decrypt a copy for its own key only: details sealed for another workspace or name
        (a record someone copied here) are refused."""
        self._details.pop(key, None)
        self._failures.pop(key, None)
        if self._key is None:
            self._failures[key] = self._key_error
            return
        try:
            self._details[key] = self._key.open(
                record.details_token, name=record.name, workspaces=[connections.workspace_of(key)]
            )
        except (SecretKeyError, msgspec.DecodeError) as exc:
            self._failures[key] = str(exc)

    def _of(self, workspace: str) -> dict[str, ConnectionRecord]:
        return {k: r for k, r in self._records.items() if connections.workspace_of(k) == workspace}

    # --- a run -------------------------------------------------------------------------------
    @staticmethod
    def workspace_of(orchestration: OrchestrationRecord | None) -> str:
        """Runs are in their orchestration's workspace."""
        return workspaces.name_of(orchestration.workspace if orchestration else "")

    def run_file_text(self, orchestration: OrchestrationRecord | None) -> str:
        """The run's connections file (JSON: the workspace and its decrypted connections),
        written 0600 in the run's private directory; ``SecretsUnavailable`` when they cannot
        be decrypted here."""
        workspace = self.workspace_of(orchestration)
        if self._unavailable:
            raise SecretsUnavailable(
                f"the executor cannot decrypt connections: {self._unavailable}"
            )
        granted: dict[str, Any] = {}
        for key, record in self._of(workspace).items():
            details = self._details.get(key)
            if details is None:
                why = self._failures.get(key, "not decrypted")
                raise SecretsUnavailable(
                    f"the executor cannot decrypt connections of workspace {workspace!r} "
                    f"(connection {record.name!r}): {why}"
                )
            granted[record.name] = {
                "name": record.name,
                "connection_type": record.connection_type,
                "details": details,
                "workspaces": record.workspaces,
                "created_at": record.created_at.isoformat(),
            }
        return json.dumps({"workspace": workspace, "connections": granted})

    def attach(self, logs: Any, orchestration: OrchestrationRecord | None) -> None:
        """Mask the run's log lines for its workspace's secret values (live: a connection
        added while the run goes on is masked from then on)."""
        logs.mask = self.masker(self.workspace_of(orchestration))

    def masker(self, workspace: str) -> Mask:
        def mask(lines: list[str]) -> list[str]:
            pattern = self._pattern(workspace)
            if pattern is None:
                return lines
            return [pattern.sub(names.MASK, line) for line in lines]

        return mask

    def _pattern(self, workspace: str) -> re.Pattern[str] | None:
        if workspace in self._patterns:
            return self._patterns[workspace]
        found = (self._details.get(key) for key in self._of(workspace))
        pattern = connections.mask_pattern(d for d in found if d is not None)
        self._patterns[workspace] = pattern
        return pattern
