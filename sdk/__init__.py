"""Taskbus Python SDK: ``import sdk; wl = sdk.Client()`` (the reference SDK's API).

``import sdk`` is cheap: only ``in_task`` and ``task_args`` are loaded eagerly (they need no
connection, and a task's child process calls them at start). Everything else — the clients,
objects, errors and status enums — is imported on first use (PEP 562), so a child that never
touches the bus never pays for nats, msgspec or anyio.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from sdk.intask import in_task, task_args

if TYPE_CHECKING:
    from broker.errors import (
        CommunicationFailed,
        ConnectionNotFound,
        InvalidArgument,
        InvalidConnection,
        InvalidName,
        InvalidOrchestration,
        InvalidSchedule,
        InvalidWorkspace,
        NotConnected,
        NotFound,
        OrchestrationCannotRun,
        OrchestrationDeployOneshotFailed,
        OrchestrationMissingFile,
        OrchestrationNotFound,
        OrchestrationNotReady,
        OrchestrationUploadFailed,
        PermissionDenied,
        RequestTimeout,
        SecretKeyError,
        ServerError,
        TaskbusError,
        TaskNotFound,
        WaitTimeout,
        WorkspaceNotFound,
        WrongArgumentType,
    )
    from broker.status import OrchestrationStatus, RunStatus, TaskStatus
    from broker.status import TaskStatus as ArbexStatus
    from sdk import object as object
    from sdk.client import AsyncClient, Client
    from sdk.connection import AsyncConnection, Connection, ConnectionList
    from sdk.lists import OrchestrationList, TaskList, TaskRunList
    from sdk.orchestration import AsyncOrchestration, Orchestration
    from sdk.run import AsyncTaskRun, TaskRun, TaskRunLogs
    from sdk.task import AsyncTask, Task
    from sdk.workspace import AsyncWorkspace, Workspace, WorkspaceList

_LAZY = {
    "Client": "sdk.client",
    "AsyncClient": "sdk.client",
    "Orchestration": "sdk.orchestration",
    "AsyncOrchestration": "sdk.orchestration",
    "Task": "sdk.task",
    "AsyncTask": "sdk.task",
    "TaskRun": "sdk.run",
    "AsyncTaskRun": "sdk.run",
    "TaskRunLogs": "sdk.run",
    "OrchestrationList": "sdk.lists",
    "TaskList": "sdk.lists",
    "TaskRunList": "sdk.lists",
    "OrchestrationStatus": "broker.status",
    "RunStatus": "broker.status",
    "TaskStatus": "broker.status",
    "ArbexStatus": "broker.status",  # the reference's name for TaskStatus
    "TaskbusError": "broker.errors",
    "NotConnected": "broker.errors",
    "ServerError": "broker.errors",
    "OrchestrationMissingFile": "broker.errors",
    "InvalidOrchestration": "broker.errors",
    "OrchestrationUploadFailed": "broker.errors",
    "OrchestrationNotReady": "broker.errors",
    "OrchestrationNotFound": "broker.errors",
    "InvalidSchedule": "broker.errors",
    "TaskNotFound": "broker.errors",
    "WaitTimeout": "broker.errors",
    "CommunicationFailed": "broker.errors",
    "RequestTimeout": "broker.errors",
    "InvalidArgument": "broker.errors",
    "InvalidName": "broker.errors",
    "WrongArgumentType": "broker.errors",
    "NotFound": "broker.errors",
    "OrchestrationCannotRun": "broker.errors",
    "OrchestrationDeployOneshotFailed": "broker.errors",
    "WorkspaceNotFound": "broker.errors",
    "InvalidWorkspace": "broker.errors",
    "ConnectionNotFound": "broker.errors",
    "InvalidConnection": "broker.errors",
    "SecretKeyError": "broker.errors",
    "PermissionDenied": "broker.errors",
    "Workspace": "sdk.workspace",
    "AsyncWorkspace": "sdk.workspace",
    "WorkspaceList": "sdk.workspace",
    "Connection": "sdk.connection",
    "AsyncConnection": "sdk.connection",
    "ConnectionList": "sdk.connection",
}
# Where a lazy name is defined under another name.
_ALIASES = {"ArbexStatus": "TaskStatus"}
# Submodules reachable as attributes (``sdk.object``, the reference's exception names); not in
# ``__all__``: ``from sdk import *`` must not shadow the builtin ``object``.
_SUBMODULES = frozenset({"object"})

__all__ = [
    "ArbexStatus",
    "AsyncClient",
    "AsyncConnection",
    "AsyncOrchestration",
    "AsyncTask",
    "AsyncTaskRun",
    "AsyncWorkspace",
    "Client",
    "CommunicationFailed",
    "Connection",
    "ConnectionList",
    "ConnectionNotFound",
    "InvalidArgument",
    "InvalidConnection",
    "InvalidName",
    "InvalidOrchestration",
    "InvalidSchedule",
    "InvalidWorkspace",
    "NotConnected",
    "NotFound",
    "Orchestration",
    "OrchestrationCannotRun",
    "OrchestrationDeployOneshotFailed",
    "OrchestrationList",
    "OrchestrationMissingFile",
    "OrchestrationNotFound",
    "OrchestrationNotReady",
    "OrchestrationStatus",
    "OrchestrationUploadFailed",
    "PermissionDenied",
    "RequestTimeout",
    "RunStatus",
    "SecretKeyError",
    "ServerError",
    "Task",
    "TaskList",
    "TaskNotFound",
    "TaskRun",
    "TaskRunList",
    "TaskRunLogs",
    "TaskStatus",
    "TaskbusError",
    "WaitTimeout",
    "Workspace",
    "WorkspaceList",
    "WorkspaceNotFound",
    "WrongArgumentType",
    "in_task",
    "task_args",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"sdk.{name}")  # the import sets it as this module's attribute
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    value = getattr(import_module(module), _ALIASES.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
