"""Packaging an orchestration: ``pending_packaging`` → ``packaging`` → ``ready`` | ``error``.

Taken from the packaging queue by any executor. The zip is fetched and extracted (which also
warms this host's cache), ``requirements.txt`` is resolved by ``uv pip compile`` into a pinned
lock for this executor's Python, stored on the orchestration record, and its environment is
built so the first run finds it cached. Any failure ends as ``error`` with a message a user
can act on (the resolver's own words, without its noise).
"""

from __future__ import annotations

import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from broker import store
from broker.connection import Bus
from broker.models import OrchestrationRecord, utcnow
from broker.status import ORCHESTRATION_SETTLED, OrchestrationStatus
from executor.artifacts import ArtifactError, Artifacts
from executor.environments import (
    EnvironmentBuildError,
    Environments,
    run_tool,
    trim_tool_output,
    uv_binary,
)

log = logging.getLogger(__name__)


class ResolutionError(RuntimeError):
    """``uv pip compile`` could not resolve requirements.txt."""


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


async def resolve(requirements: str) -> str:
    """Pin ``requirements`` for this interpreter: the lock every host installs."""
    with tempfile.TemporaryDirectory(prefix="taskbus-resolve-") as folder:
        source = Path(folder) / "requirements.txt"
        source.write_text(requirements)
        code, lock, errors = await run_tool(
            uv_binary(), "pip", "compile", str(source), "--python", sys.executable,
            "--no-header", "--no-annotate", "--quiet", "--no-progress",
        )  # fmt: skip
        if code != 0:
            message = trim_tool_output((errors or lock).replace(str(source), "requirements.txt"))
            raise ResolutionError(message)
    # The lock is uv's stdout; with --quiet nothing else is printed on success.
    return "\n".join(line for line in lock.splitlines() if line.strip()) + "\n"


async def _set(bus: Bus, orchestration_id: str, **changes: object) -> OrchestrationRecord | None:
    def mutate(record: OrchestrationRecord) -> OrchestrationRecord | None:
        if record.status in ORCHESTRATION_SETTLED:
            return None  # another packager finished it (a redelivery raced this one)
        return msgspec.structs.replace(record, updated_at=utcnow(), **changes)

    return await store.update(bus.orchestrations, orchestration_id, OrchestrationRecord, mutate)


async def package(
    bus: Bus, artifacts: Artifacts, environments: Environments, orchestration_id: str
) -> OrchestrationStatus | None:
    """Package one orchestration; returns its final status (None: it no longer exists)."""
    found = await store.get(bus.orchestrations, orchestration_id, OrchestrationRecord)
    if found is None:
        return None
    record = found[0]
    if record.status in ORCHESTRATION_SETTLED:
        return record.status
    started = time.monotonic()
    updated = await _set(bus, orchestration_id, status=OrchestrationStatus.PACKAGING, error="")
    if updated is None or updated.status in ORCHESTRATION_SETTLED:
        return None if updated is None else updated.status
    try:
        await artifacts.tree(record.sha)
        if not record.requirements.strip():
            lock = ""
        else:
            lock = await resolve(record.requirements)
            await _set(bus, orchestration_id, lock=lock, python=python_version())
            environment = await environments.acquire(lock)
            environment.release()
    except ResolutionError as exc:
        return await _fail(bus, record, f"requirements.txt could not be resolved: {exc}")
    except EnvironmentBuildError as exc:
        return await _fail(bus, record, f"the environment could not be built: {exc}")
    except ArtifactError as exc:
        return await _fail(bus, record, str(exc))
    await _set(
        bus,
        orchestration_id,
        status=OrchestrationStatus.READY,
        lock=lock,
        python=python_version() if lock else "",
    )
    log.info(
        "✓ packaged %s (%s) in %.2f s on Python %s",
        record.name, orchestration_id, time.monotonic() - started, platform.python_version(),
    )  # fmt: skip
    return OrchestrationStatus.READY


async def _fail(bus: Bus, record: OrchestrationRecord, message: str) -> OrchestrationStatus:
    log.info("✗ packaging %s (%s) failed: %s", record.name, record.id, message)
    await _set(bus, record.id, status=OrchestrationStatus.ERROR, error=message)
    return OrchestrationStatus.ERROR
