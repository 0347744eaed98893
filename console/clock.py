"""The console's notion of "now" and of local time, injectable so tests can freeze both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo


def _local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else UTC


@dataclass(frozen=True)
class Clock:
    """``now()`` in UTC and the zone that "local time" means on this screen."""

    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    local: tzinfo = field(default_factory=_local_zone)

    @classmethod
    def frozen(cls, at: datetime, local: tzinfo = UTC) -> Clock:
        return cls(now=lambda: at, local=local)
