"""The lists the client returns: plain ``list`` subclasses that show as tables.

Each is generic over the sync or async object it holds (``TaskList[Task]`` from ``Client``,
``TaskList[AsyncTask]`` from ``AsyncClient``); the columns are the reference SDK's.
"""

from __future__ import annotations

from sdk.display import D, ShownList


class OrchestrationList(ShownList[D]):
    columns = ("id", "name", "status", "filename", "sha", "created at", "updated at", "workspace")
    empty = "(no orchestrations)"


class TaskList(ShownList[D]):
    columns: tuple[str, ...] = (
        "id",
        "name",
        "last run status",
        "type",
        "active",
        "schedule",
        "created at",
        "updated at",
        "workspace",
    )
    empty = "(no tasks)"


class TaskTable(TaskList[D]):
    """Tasks as ``taskbus tasks`` shows them: with each task's status (paused, killed, …)."""

    columns: tuple[str, ...] = ("id", "name", "status", *TaskList.columns[2:])


class TaskRunList(ShownList[D]):
    columns = ("task id", "run id", "status", "created at", "updated at")
    empty = "(no task runs)"
