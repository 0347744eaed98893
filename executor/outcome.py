"""How a run ended: its final status, exit code and reason, as recorded in its run record."""

from __future__ import annotations

import signal
from typing import NamedTuple

from broker.status import RunStatus


class Outcome(NamedTuple):
    status: RunStatus
    exit_code: int | None
    reason: str


def outcome_of(code: int) -> Outcome:
    if code == 0:
        return Outcome(RunStatus.SUCCESS, 0, "")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return Outcome(RunStatus.FAILURE, code, f"killed by signal {name}")
    return Outcome(RunStatus.FAILURE, code, f"exit code {code}")
