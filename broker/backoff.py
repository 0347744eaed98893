"""The one back-off for starting something again after it failed: a daemon ``taskbus up``
restarts, a continuous task's next run, a task's retry.

The delay doubles from ``first_s`` with each consecutive failure, up to ``max_s``; something
that stayed up (or ran) ``healthy_s`` starts over at ``first_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# 2**64 times any first delay is past any max: counting further would only overflow a float.
_MAX_DOUBLINGS = 64


@dataclass(kw_only=True)
class Backoff:
    first_s: float = 1.0
    max_s: float = 30.0
    healthy_s: float = math.inf
    _failures: int = field(default=0, init=False)

    def delay_s(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failures (0: none)."""
        if failures <= 0:
            return 0.0
        doublings = min(failures - 1, _MAX_DOUBLINGS)
        return float(min(self.first_s * 2**doublings, self.max_s))

    def after(self, uptime_s: float) -> float:
        """The delay before the next start of something that failed after ``uptime_s``,
        counting its consecutive failures here."""
        if uptime_s > self.healthy_s:
            self._failures = 0
        self._failures += 1
        return self.delay_s(self._failures)
