"""``import wallaroo`` inside a Taskbus task: the Taskbus SDK under the reference's name.

Every name of ``sdk`` is reachable here (``wallaroo.Client()``, ``wallaroo.in_task()``,
``wallaroo.ArbexStatus``, …), as lazily as in ``sdk`` (a task that only reads its arguments
never loads nats); ``wallaroo.object`` is ``sdk.object``. The executor puts this package on a
task's path after the task's own packages, so the real ``wallaroo``, when the orchestration's
requirements install it, wins (see ``sdk/_reference/README.md``).
"""

from __future__ import annotations

import sys
from typing import Any

import sdk
from sdk import in_task as in_task
from sdk import object as object
from sdk import task_args as task_args

sys.modules[f"{__name__}.object"] = object  # ``from wallaroo.object import …`` is sdk.object

__all__ = sdk.__all__


def __getattr__(name: str) -> Any:
    return getattr(sdk, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(sdk.__dir__()))
