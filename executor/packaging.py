"""Packaging an orchestration: ``pending_packaging`` → ``packaging`` → ``ready`` | ``error``.

Taken from the packaging queue by any executor. The zip is fetched and extracted (which also
warms this host's cache), ``requirements.txt`` is resolved by ``uv pip compile`` into a pinned
lock for this executor's Python, stored on the orchestration record, and its environment is
built so the first run finds it cached. Any failure ends as ``error`` with a message a user
can act on, in Taskbus's words: which requirements.txt line and why. uv's own output may quote
files of this host, so it goes to the executor's log only.

requirements.txt is checked here again (broker.requirements) before uv sees any of it: the
SDK's check at upload is for fast feedback, this one is the enforcement. uv gets the text
rebuilt from the parsed lines, and the operator's index. With ``--hash`` pins the lock keeps
them (every package of the lock must be one of the user's lines, as in pip's hash-checking
mode), and environments install it with ``--require-hashes``.
"""

from __future__ import annotations

import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

from broker import names, requirements, scope, store
from broker.connection import Bus
from broker.errors import InvalidArgument, InvalidOrchestration
from broker.models import OrchestrationRecord, PackageRequest, utcnow
from broker.status import ORCHESTRATION_SETTLED, OrchestrationStatus
from executor.artifacts import ArtifactError, Artifacts
from executor.environments import (
    EnvironmentBuildError,
    Environments,
    explain_failure,
    index_args,
    run_tool,
    uv_binary,
)

log = logging.getLogger(__name__)


class ResolutionError(RuntimeError):
    """``uv pip compile`` could not resolve requirements.txt."""


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


async def resolve(
    text: str, index_url: str | None = None, *, source: str = requirements.SOURCE
) -> str:
    """Pin requirements.txt ``text`` for this interpreter: the lock every host installs ("" when
    it lists nothing). ``InvalidOrchestration`` for a refused line, ``ResolutionError`` when
    uv cannot resolve it."""
    lines = requirements.parse(text, source=source)
    if not lines:
        return ""
    hashed = requirements.hashed(lines)
    with tempfile.TemporaryDirectory(prefix="taskbus-resolve-") as folder:
        infile = Path(folder) / "requirements.txt"
        infile.write_text(requirements.render(lines, with_hashes=False))
        code, lock, errors = await run_tool(
            uv_binary(), "pip", "compile", str(infile), "--python", sys.executable,
            "--no-header", "--no-annotate", "--quiet", "--no-progress",
            *(["--generate-hashes"] if hashed else []), *index_args(index_url),
        )  # fmt: skip
    if code != 0:
        log.warning("uv pip compile failed (exit %d):\n%s", code, errors or lock)
        raise ResolutionError(explain_failure(errors or lock, lines))
    # The lock is uv's stdout; with --quiet nothing else is printed on success.
    try:
        pinned = requirements.parse(lock, source="the resolved lock")
    except InvalidOrchestration as exc:  # uv printed something we would not install
        log.warning("uv pip compile printed a lock Taskbus refuses (%s):\n%s", exc, lock)
        raise ResolutionError("the resolver's lock was not plain requirements") from None
    return requirements.render(keep_hashes(lines, pinned) if hashed else pinned)


async def resolve_base(path: Path, index_url: str | None = None) -> str:
    """The executor's base requirements file (``--base-requirements``) pinned like any
    requirements.txt (same rules, same resolver, same index); ``InvalidArgument`` saying what
    to fix when it cannot be read, has a refused line or does not resolve."""
    try:
        text = await anyio.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidArgument(
            f"--base-requirements {path}: cannot read it ({reason}); give a requirements file"
        ) from None
    try:
        return await resolve(text, index_url, source=str(path))
    except InvalidOrchestration as exc:
        raise InvalidArgument(f"--base-requirements {exc}") from None
    except ResolutionError as exc:
        raise InvalidArgument(f"--base-requirements {path} could not be resolved: {exc}") from None


def keep_hashes(
    wanted: list[requirements.Line], pinned: list[requirements.Line]
) -> list[requirements.Line]:
    """The lock with the user's ``--hash`` pins in place of the index's: every locked package
    must be one of the user's lines, and when the index lists sha256 hashes, one of the user's
    must be among them (else no file the index offers could ever install)."""
    by_name = {line.name: line for line in wanted}
    for entry in pinned:
        if entry.name not in by_name:
            raise ResolutionError(
                f"{entry.requirement.name!r} is needed by another requirement but has no line of "
                f"its own: with --hash pins every package must be listed with its hash "
                f"(`uv pip compile --generate-hashes` writes such a file)"
            )
    locked = []
    for entry in pinned:
        mine = by_name[entry.name]
        offered = set(entry.hashes)
        ours = set(mine.hashes)
        if offered and all(h.startswith("sha256:") for h in ours) and not offered & ours:
            raise ResolutionError(
                f"line {mine.number}: no file of {entry.requirement} on the package index "
                f"matches its --hash pins; check them (`pip hash FILE`, or `uv pip compile "
                f"--generate-hashes`)"
            )
        locked.append(
            requirements.Line(number=mine.number, requirement=entry.requirement, hashes=mine.hashes)
        )
    return locked


async def _set(bus: Bus, key: str, **changes: object) -> OrchestrationRecord | None:
    def mutate(record: OrchestrationRecord) -> OrchestrationRecord | None:
        if record.status in ORCHESTRATION_SETTLED:
            return None  # another packager finished it (a redelivery raced this one)
        return msgspec.structs.replace(record, updated_at=utcnow(), **changes)

    return await store.update(bus.orchestrations, key, OrchestrationRecord, mutate)


async def package(
    bus: Bus, artifacts: Artifacts, environments: Environments, request: PackageRequest
) -> OrchestrationStatus | None:
    """Package one orchestration; returns its final status (None: it no longer exists)."""
    workspace = names.workspace_token(request.workspace)
    key = names.orchestration_key(workspace, request.orchestration_id)
    found = await store.get(bus.orchestrations, key, OrchestrationRecord)
    record = None if found is None else scope.adopt(key, found[0])
    if record is None:
        return None
    if record.status in ORCHESTRATION_SETTLED:
        return record.status
    started = time.monotonic()
    updated = await _set(bus, key, status=OrchestrationStatus.PACKAGING, error="")
    if updated is None or updated.status in ORCHESTRATION_SETTLED:
        return None if updated is None else updated.status
    try:
        requirements.parse(record.requirements)  # before anything reads the zip or runs uv
        await artifacts.tree(workspace, record.sha)
        lock = await resolve(record.requirements, environments.index_url)
        if lock:
            await _set(bus, key, lock=lock, python=python_version())
            environment = await environments.acquire(lock)
            environment.release()
    except InvalidOrchestration as exc:
        return await _fail(bus, record, str(exc))
    except ResolutionError as exc:
        return await _fail(bus, record, f"requirements.txt could not be resolved: {exc}")
    except EnvironmentBuildError as exc:
        return await _fail(bus, record, f"the environment could not be built: {exc}")
    except ArtifactError as exc:
        return await _fail(bus, record, str(exc))
    await _set(
        bus,
        key,
        status=OrchestrationStatus.READY,
        lock=lock,
        python=python_version() if lock else "",
    )
    log.info(
        "✓ packaged %s (%s) in %.2f s on Python %s",
        record.name, key, time.monotonic() - started, platform.python_version(),
    )  # fmt: skip
    return OrchestrationStatus.READY


async def _fail(bus: Bus, record: OrchestrationRecord, message: str) -> OrchestrationStatus:
    log.info("✗ packaging %s (%s) failed: %s", record.name, record.id, message)
    await _set(bus, record.key, status=OrchestrationStatus.ERROR, error=message)
    return OrchestrationStatus.ERROR
