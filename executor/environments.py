"""Virtualenvs for orchestrations with requirements: built by uv from the pinned lock, cached.

An environment is keyed by sha256(lock, Python version, platform): every run of every
orchestration with the same lock shares it, and a cache hit installs nothing. An executor
started with ``--base-requirements`` has a base lock too (resolved at start,
``executor.packaging.resolve_base``): every environment then installs the base lock first and
the orchestration's lock over it (so the orchestration's pins win), is keyed by both, and an
orchestration without requirements gets the base-only one. Layout under ``env_dir``::

    <key>/                the virtualenv; ``<key>/.taskbus-ready`` (written last) marks it
                          complete and holds its size and build time
    <key>.lock            flock: exclusive while building or evicting, shared while in use
    <key>.used            its mtime is the last use (for LRU eviction)

Two runs or two executor processes asking for the same key at once: one builds under the
exclusive lock, the other waits for it and then finds the marker. Runs (and the warm zygote of
an environment) hold the shared lock, so eviction, which needs the exclusive one, never
removes an environment in use. Past ``max_bytes`` the least recently used ones go.

``import sdk`` works in every environment: a ``.pth`` file, processed after the venv's own
site-packages, appends the folders where ``sdk``/``broker`` and their dependencies live, so the
user's pinned versions come first and the executor's are only a fallback. ``import wallaroo``
works too: the same file moves the reference shim (``sdk/_reference``, a folder holding the SDK
as a ``wallaroo`` package, which every run gets as the last entry of ``PYTHONPATH``) to the end
of ``sys.path``, so the real ``wallaroo`` wins when the lock installs it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import site
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import uv

from broker import names, requirements
from broker.errors import InvalidOrchestration

log = logging.getLogger(__name__)

READY = ".taskbus-ready"
PTH_NAME = "taskbus_sdk.pth"
LOCK_POLL_S = 0.02


class EnvironmentBuildError(RuntimeError):
    """uv could not build the environment; the message says why in Taskbus's words (uv's own
    output, which may quote host files, goes to the executor's log only)."""


def python_tag() -> str:
    """What a lock is resolved for and an environment is built with: this interpreter."""
    return f"{sys.implementation.name}-{platform.python_version()}-{sysconfig.get_platform()}"


def env_key(lock: str, base: str = "") -> str:
    layered = f"base:\n{base}\nover it:\n" if base else ""  # no base: the key as it always was
    return hashlib.sha256(f"{layered}{lock}\n{python_tag()}".encode()).hexdigest()[:32]


def uv_binary() -> str:
    return str(uv.find_uv_bin())


def index_args(index_url: str | None) -> list[str]:
    """uv's index options: the operator's ``TASKBUS_INDEX_URL``, else uv's own configuration."""
    return ["--default-index", index_url] if index_url else []


def _mentioned(output: str, lines: list[requirements.Line]) -> list[requirements.Line]:
    """The requirement lines whose package uv's output names (in line order)."""
    text = output.lower()
    found = []
    for line in lines:
        spellings = {line.name, line.name.replace("-", "_"), line.requirement.name.lower()}
        if any(re.search(rf"(?<![\w.-]){re.escape(s)}(?![\w-])", text) for s in spellings):
            found.append(line)
    return found


def explain_failure(output: str, lines: list[requirements.Line]) -> str:
    """What went wrong, in Taskbus's words: which requirement lines uv's output concerns and
    why, with a hint. Never uv's own text: it may quote files of this host (the executor's log
    has it in full)."""
    text = output.lower()
    mentioned = _mentioned(output, lines)

    def which(template: str) -> str:
        if not mentioned:
            return ""
        return "; ".join(
            f"line {line.number}: " + template.format(name=line.requirement.name, line=line)
            for line in mentioned
        )

    if any(
        marker in text
        for marker in ("failed to fetch", "error sending request", "request failed after",
                       "connect error", "dns error", "timed out")
    ):  # fmt: skip
        return (
            "the package index could not be reached; it is the executor operator's setting "
            f"({names.ENV_INDEX_URL}, else uv's configuration): ask them to check it"
        )
    if "hash mismatch" in text or "hashes do not match" in text:
        detail = which("a file of {name!r} does not match its --hash pins")
        return (detail or "a downloaded file does not match its --hash pins") + (
            "; check the hashes (`pip hash FILE`, or `uv pip compile --generate-hashes`)"
        )
    if "not found in the package registry" in text or "was not found in" in text:
        missing = [line for line in mentioned if f"{line.name} was not found" in text] or mentioned
        if missing:
            return (
                "; ".join(
                    f"line {line.number}: {line.requirement.name!r} was not found on the package "
                    f"index"
                    for line in missing
                )
                + "; check the spelling (PyPI unless the executor's operator set another index)"
            )
    if "no version of" in text or "unsatisfiable" in text or "no solution" in text:
        detail = which("no version of {name!r} matches {line.requirement!s}")
        return (
            (detail or "no set of versions satisfies every requirement together")
            + "; check the names and versions on the package index (PyPI unless the "
            "executor's operator set another)"
        )
    if any(marker in text for marker in ("failed to build", "and build", "build backend")):
        detail = which("{name!r} had to be built from source, and its build failed")
        return (detail or "a package had to be built from source, and its build failed") + (
            "; pin a version that ships a wheel for this Python"
        )
    detail = which("{name!r} is involved")
    return (
        f"uv failed{' (' + detail + ')' if detail else ''}; the executor's log has its full output"
    )


def sdk_paths() -> list[str]:
    """Folders to append to a task venv's path so ``import sdk`` works: where the ``sdk`` and
    ``broker`` packages live, then this interpreter's site-packages (msgspec, nats, anyio)."""
    paths: list[str] = []
    for module in ("sdk", "broker", "msgspec", "nats", "anyio"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            paths.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    paths.extend(site.getsitepackages())
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def reference_shim_dir() -> str:
    """The folder holding the ``wallaroo`` package that is the SDK under the reference's name."""
    spec = importlib.util.find_spec("sdk")
    assert spec is not None and spec.origin is not None  # the executor ships with the SDK
    return str(Path(spec.origin).parent / "_reference")


def with_reference_shim(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the reference shim as the last entry of ``PYTHONPATH``: after the zip's own
    folder (``sys.path[0]``), so a zip's own ``wallaroo`` package wins."""
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join([*paths, reference_shim_dir()])}


def pth_text() -> str:
    """The environment's ``.pth``: the SDK's folders, then (an ``import`` line, run by ``site``
    after the environment's own site-packages are on the path) the shim moved to the end."""
    shim = reference_shim_dir()
    move = f"import sys; sys.path[:] = [p for p in sys.path if p != {shim!r}] + [{shim!r}]"
    return "\n".join([*sdk_paths(), move]) + "\n"


def write_pth(path: Path) -> None:
    """Write the ``.pth`` of the environment at ``path`` unless it is current (environments
    built by an older executor get the shim line on their next use)."""
    pth = Path(sysconfig.get_path("purelib", vars={"base": str(path)})) / PTH_NAME
    text = pth_text()
    try:
        if pth.read_text() == text:
            return
    except OSError:
        pass
    partial = pth.with_name(f"{PTH_NAME}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, pth)  # a run starting meanwhile reads the old file or the new one


@dataclass(eq=False)
class Environment:
    """A ready environment, held (shared lock) until ``release()``."""

    key: str
    path: Path
    python: str
    hit: bool
    build_s: float
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops the flock
            self._fd = -1


async def run_tool(*args: str) -> tuple[int, str, str]:
    """Run uv; returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["NO_COLOR"] = "1"
    result = await anyio.run_process(list(args), check=False, env=env, cwd="/")
    stdout = result.stdout.decode(errors="replace")
    return result.returncode, stdout, result.stderr.decode(errors="replace")


class Environments:
    def __init__(
        self, root: Path, max_bytes: int, index_url: str | None = None, base_lock: str = ""
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # The operator's index for every resolve and install of this host (None: uv decides).
        self.index_url = index_url or os.environ.get(names.ENV_INDEX_URL) or None
        # Installed under every environment's own lock ("": none; set once at executor start).
        self.base_lock = base_lock
        self.root.mkdir(parents=True, exist_ok=True)
        self._uv = uv_binary()

    def needed(self, lock: str) -> bool:
        """Whether a run with ``lock`` gets an environment (else: the executor's interpreter)."""
        return bool(lock or self.base_lock)

    async def acquire(self, lock: str) -> Environment:
        """The environment for ``lock`` (over the base lock, if any), built if missing; hold it
        until ``release()``."""
        base = self.base_lock
        key = env_key(lock, base)
        path = self.root / key
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            await _flock(fd, fcntl.LOCK_SH)
            hit = (path / READY).is_file()
            build_s = 0.0
            if not hit:
                fcntl.flock(fd, fcntl.LOCK_UN)
                await _flock(fd, fcntl.LOCK_EX)
                hit = (path / READY).is_file()  # built meanwhile by someone else
                if not hit:
                    build_s = await self._build(path, lock, base)
                fcntl.flock(fd, fcntl.LOCK_SH)
            if hit:
                write_pth(path)
            (self.root / f"{key}.used").touch()
        except BaseException:
            os.close(fd)
            raise
        environment = Environment(
            key=key, path=path, python=str(path / "bin" / "python"), hit=hit, build_s=build_s,
            _fd=fd,
        )  # fmt: skip
        if not hit:
            await anyio.to_thread.run_sync(self.evict)
        return environment

    def share(self, environment: Environment) -> int:
        """Another shared hold on an environment already held (for its zygote's lifetime);
        close the returned fd to let go."""
        fd = os.open(
            self.root / f"{environment.key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # never waits: a run holds it shared
        except OSError:
            os.close(fd)
            raise
        return fd

    async def _build(self, path: Path, lock: str, base: str = "") -> float:
        started = time.monotonic()
        try:  # the lock is uv's input: a record written by hand must not smuggle options in
            pinned = requirements.parse(lock, source="the pinned lock")
        except InvalidOrchestration as exc:
            raise EnvironmentBuildError(f"{exc}; upload the orchestration again") from None
        # The base lock was resolved from parsed lines by this executor: it parses.
        base_pinned = requirements.parse(base, source="the base lock")
        # A build that died half-way leaves a folder without the marker.
        await anyio.to_thread.run_sync(shutil.rmtree, path, True)
        code, _, output = await run_tool(
            self._uv, "venv", "--quiet", "--no-progress", "--python", sys.executable, str(path)
        )
        if code != 0:
            log.warning("uv venv failed (exit %d) for %s:\n%s", code, path.name, output)
            raise EnvironmentBuildError(
                "uv could not create a virtualenv on the executor; its log has uv's output"
            )
        python = str(path / "bin" / "python")
        if base_pinned:  # the base first, then the orchestration's lock over it (its pins win)
            base_what = "the executor's base requirements"
            await self._install(path, python, "base.lock", base_pinned, "sync", base_what)
        if pinned:
            how, what = ("install" if base_pinned else "sync"), "the pinned requirements"
            await self._install(path, python, "requirements.lock", pinned, how, what)
        write_pth(path)
        build_s = time.monotonic() - started
        size = await anyio.to_thread.run_sync(_tree_size, path)
        (path / READY).write_text(json.dumps({"size": size, "build_s": round(build_s, 3)}))
        log.info("built environment %s in %.2f s (%d MiB)", path.name, build_s, size >> 20)
        return build_s

    async def _install(
        self,
        path: Path,
        python: str,
        name: str,
        pinned: list[requirements.Line],
        how: str,
        what: str,
    ) -> None:
        """``uv pip sync`` (exactly this lock) or ``install`` (over what is there) one lock."""
        lock_file = path / name
        lock_file.write_text(requirements.render(pinned))
        hashes = ["--require-hashes"] if requirements.hashed(pinned) else []
        source = [str(lock_file)] if how == "sync" else ["-r", str(lock_file)]
        code, _, output = await run_tool(
            self._uv, "pip", how, "--quiet", "--no-progress", "--python", python,
            *hashes, *index_args(self.index_url), *source,
        )  # fmt: skip
        if code != 0:
            shutil.rmtree(path, ignore_errors=True)
            log.warning("uv pip %s failed (exit %d) for %s:\n%s", how, code, path.name, output)
            raise EnvironmentBuildError(
                f"installing {what} failed: {explain_failure(output, pinned)}"
            )

    def evict(self) -> list[str]:
        """Remove least recently used environments not in use until under ``max_bytes``."""
        entries: list[tuple[float, str, int]] = []
        for marker in self.root.glob(f"*/{READY}"):
            key = marker.parent.name
            try:
                size = int(json.loads(marker.read_text())["size"])
                used_at = (self.root / f"{key}.used").stat().st_mtime
            except (OSError, ValueError, KeyError):
                continue
            entries.append((used_at, key, size))
        total = sum(size for _, _, size in entries)
        evicted: list[str] = []
        for _, key, size in sorted(entries):
            if total <= self.max_bytes:
                break
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # in use
            try:
                (self.root / key / READY).unlink(missing_ok=True)
                shutil.rmtree(self.root / key, ignore_errors=True)
            finally:
                os.close(fd)
            total -= size
            evicted.append(key)
            log.info("evicted environment %s (%d MiB)", key, size >> 20)
        return evicted


async def _flock(fd: int, mode: int) -> None:
    """Take a flock without blocking the event loop (polling; cancellable)."""
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        await asyncio.sleep(LOCK_POLL_S)


def _tree_size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
