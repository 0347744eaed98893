"""Per-task resource limits as users spell them in the SDK: ``memory_limit="2GiB"``,
``cpu_limit=1.5``; checked where a task is made, stored as bytes and CPUs."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "tb": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
MIN_MEMORY_BYTES = 8 << 20  # below this no Python interpreter starts


class InvalidLimit(ValueError):
    """A memory or CPU limit that cannot be understood (the caller wraps it in its error)."""


def parse_memory(value: str | int | None) -> int | None:
    """``"2GiB"``, ``"512MiB"``, ``"1.5G"`` or a number of bytes → bytes (None: no limit)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidLimit(f"memory_limit wants a size such as '2GiB', not {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise InvalidLimit(
                f"memory_limit {value!r} is not a size: write e.g. '512MiB' or '2GiB'"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < MIN_MEMORY_BYTES:
        raise InvalidLimit(
            f"memory_limit {value!r} is below {describe_bytes(MIN_MEMORY_BYTES)}: no Python "
            f"process fits; give at least that"
        )
    return size


def parse_cpus(value: float | int | str | None) -> float | None:
    """``1.5`` CPUs (None: no limit); at least 0.01."""
    if value is None:
        return None
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidLimit(f"cpu_limit wants a number of CPUs such as 1.5, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(cpus) or cpus < 0.01:
        raise InvalidLimit(f"cpu_limit wants a number of CPUs of at least 0.01, not {value!r}")
    return cpus


def describe_bytes(size: int) -> str:
    """2147483648 → ``2 GiB``; 1536 MiB → ``1.5 GiB``."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"
