"""Orchestration files on this host: each zip downloaded, extracted and compiled once per sha,
and a private working copy for every run.

Layout under ``<work_dir>``::

    zips/<sha>.zip        downloaded with ``writeinto=`` (NATS-NOTES: a plain get is O(n²))
    trees/<sha>/          extracted and pre-compiled; appears atomically (extract into a temp
                          folder, then rename), so a tree that exists is complete
    runs/<uuid>/          a run's working copy (its cwd)

A run's working copy: files under 1 MiB are copied, so a task that writes a shipped file in
place cannot change the cached tree; bigger files (models, data) are hardlinked to save the
copy, and checked after the run: if one was written in place, the cached tree is dropped and
the next run extracts the zip again. ``__pycache__`` files are hardlinked (Python replaces them
by rename, never in place); copies keep their mtime so the compiled files stay valid even with
PYTHONDONTWRITEBYTECODE set. The entrypoint itself is not compiled (a script never is).

Creating and deleting folders is the dearest part of a short run on a journaling disk (~0.1 ms
a mkdir, up to ~0.4 ms a rmdir here), so a working copy that a run left exactly as it found it
(same entries, sizes and mtimes, folders included) is kept as a spare for the next run of the
same zip; any other is deleted off the event loop. Run arguments files go to a tmpfs scratch
folder when there is one (/dev/shm): a file there costs microseconds, not a disk journal entry.
"""

from __future__ import annotations

import asyncio
import compileall
import hashlib
import logging
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from broker import archive
from broker.connection import Bus

log = logging.getLogger(__name__)

HARDLINK_MIN_BYTES = 1 << 20
SPARES_PER_SHA = 8
Snapshot = dict[str, tuple[int, int]]


class ArtifactError(RuntimeError):
    """The orchestration's zip could not be fetched or extracted."""


@dataclass
class RunFolder:
    path: Path  # the working copy
    sha: str  # of the zip it was made from
    snapshot: Snapshot = field(default_factory=dict)  # entries as copied
    # Hardlinked big files and their (size, mtime_ns) when linked.
    linked: dict[Path, tuple[int, int]] = field(default_factory=dict)


class Artifacts:
    def __init__(self, bus: Bus, work_dir: Path, scratch: Path) -> None:
        self._bus = bus
        self.zips = work_dir / "zips"
        self.trees = work_dir / "trees"
        self.runs = work_dir / "runs"
        self.scratch = scratch
        if self.runs.exists():  # copies left by an earlier process
            shutil.rmtree(self.runs, ignore_errors=True)
        for folder in (self.zips, self.trees, self.runs, self.scratch):
            folder.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}
        self._spares: dict[str, list[RunFolder]] = {}

    async def tree(self, sha: str) -> Path:
        """The extracted, compiled files of one zip (fetched on first use)."""
        tree = self.trees / sha
        if tree.is_dir():
            return tree
        lock = self._locks.setdefault(sha, asyncio.Lock())
        async with lock:
            if tree.is_dir():
                return tree
            zip_path = await self._download(sha)
            await anyio.to_thread.run_sync(self._extract, zip_path, tree)
            log.info("extracted %s into %s", sha[:12], tree)
        return tree

    async def _download(self, sha: str) -> Path:
        path = self.zips / f"{sha}.zip"
        if path.is_file():
            return path
        partial = self.zips / f".{sha}.{uuid.uuid4().hex[:8]}.part"
        try:
            with partial.open("wb") as handle:
                await self._bus.artifacts.get(sha, writeinto=handle)
            digest = await anyio.to_thread.run_sync(_sha256_file, partial)
            if digest != sha:
                raise ArtifactError(
                    f"the stored zip {sha[:12]} is corrupt (its sha256 is {digest[:12]}); "
                    f"upload the orchestration again"
                )
            os.replace(partial, path)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(
                f"could not fetch the orchestration zip {sha[:12]} from the bus: {exc}"
            ) from exc
        finally:
            partial.unlink(missing_ok=True)
        return path

    def _extract(self, zip_path: Path, tree: Path) -> None:
        staging = self.trees / f".{tree.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            archive.extract(zip_path, staging)
            with zipfile.ZipFile(zip_path) as handle:
                entrypoint = archive.find_entrypoint(handle.namelist())
            skip = re.compile(re.escape(str(staging / entrypoint)) + "$")
            compileall.compile_dir(staging, quiet=2, workers=1, rx=skip)
            try:
                os.rename(staging, tree)
            except OSError:
                if not tree.is_dir():  # not a concurrent extraction that won: a real error
                    raise
        except Exception as exc:
            raise ArtifactError(f"could not extract the orchestration zip: {exc}") from exc
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def drop_tree(self, sha: str) -> None:
        """Forget a tree whose files a run changed in place (and its spare copies, which share
        those files); the next run extracts anew."""
        for spare in self._spares.pop(sha, []):
            shutil.rmtree(spare.path, ignore_errors=True)
        tree = self.trees / sha
        trash = self.trees / f".{sha}.{uuid.uuid4().hex[:8]}.trash"
        try:
            os.rename(tree, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- per-run folders ---------------------------------------------------------------------
    def make_run_folder(self, tree: Path, sha: str) -> RunFolder:
        spares = self._spares.get(sha)
        if spares:
            return spares.pop()
        folder = RunFolder(path=self.runs / uuid.uuid4().hex, sha=sha)
        _copy_tree(tree, folder.path, folder.linked)
        folder.snapshot = _snapshot(folder.path)
        return folder

    def changed_links(self, folder: RunFolder) -> list[Path]:
        """Hardlinked files that a run wrote in place (so the cached tree changed too)."""
        changed = []
        for path, (size, mtime_ns) in folder.linked.items():
            try:
                st = path.stat()
            except OSError:
                continue  # deleted or replaced by rename: the tree's copy is untouched
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                changed.append(path)
        return changed

    def release_run_folder(self, folder: RunFolder) -> Path | None:
        """Keep an untouched working copy as a spare; else return it for deletion."""
        spares = self._spares.setdefault(folder.sha, [])
        if len(spares) < SPARES_PER_SHA and (self.trees / folder.sha).is_dir():
            try:
                untouched = _snapshot(folder.path) == folder.snapshot
            except OSError:
                untouched = False
            if untouched:
                spares.append(folder)
                return None
        return folder.path

    def args_file(self, key: str) -> Path:
        return self.scratch / f"{key}.json"

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def _copy_tree(source: Path, dest: Path, linked: dict[Path, tuple[int, int]]) -> None:
    dest.mkdir()
    in_cache = source.name == "__pycache__"
    with os.scandir(source) as entries:
        for entry in entries:
            target = dest / entry.name
            if entry.is_dir(follow_symlinks=False):
                _copy_tree(Path(entry.path), target, linked)
                continue
            st = entry.stat(follow_symlinks=False)
            if in_cache:
                os.link(entry.path, target)
            elif st.st_size >= HARDLINK_MIN_BYTES:
                os.link(entry.path, target)
                linked[target] = (st.st_size, st.st_mtime_ns)
            else:
                shutil.copy2(entry.path, target)


def _snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` with its size and mtime (a folder's mtime changes when an
    entry is added, removed or renamed in it)."""
    found: Snapshot = {}
    st = root.stat()
    found[""] = (-1, st.st_mtime_ns)
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    found[entry.path] = (-1, st.st_mtime_ns)
                    stack.append(Path(entry.path))
                else:
                    found[entry.path] = (st.st_size, st.st_mtime_ns)
    return found


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
