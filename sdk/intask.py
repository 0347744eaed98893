"""Helpers for code running inside a task run: cheap on purpose.

A task's child process imports these at start, so this module imports only the standard
library's ``json`` and ``os`` (and the names module): no nats, msgspec, anyio or asyncio, whose
imports would lengthen every run's start.
"""

from __future__ import annotations

import json
import os
from typing import Any

from broker import names
from broker.errors import WrongArgumentType


def in_task() -> bool:
    """True inside a task run (the executor sets the run's ids in the environment)."""
    return bool(os.environ.get(names.ENV_TASK_ID))


def task_args() -> dict[str, Any]:
    """The task's ``json_args``; ``{}`` outside a task."""
    path = os.environ.get(names.ENV_ARGS_FILE)
    if not path:
        return {}
    with open(path, encoding="utf-8") as file:
        args = json.load(file)
    if not isinstance(args, dict):
        raise WrongArgumentType(f"{names.ENV_ARGS_FILE} ({path}) does not hold a JSON object")
    return args


def connections() -> dict[str, Any] | None:
    """Inside a task: ``{"workspace": name, "connections": {name: {...}}}`` as the executor
    wrote it (details decrypted); None outside a task (no such file)."""
    path = os.environ.get(names.ENV_CONNECTIONS_FILE)
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, dict):
        raise WrongArgumentType(
            f"{names.ENV_CONNECTIONS_FILE} ({path}) does not hold a JSON object: the executor "
            f"writes it; do not replace it"
        )
    return data
