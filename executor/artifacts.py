"""Orchestration files on this host: each zip downloaded, extracted and compiled once per sha,
and a private working copy for every run.

Layout under ``<work_dir>``::

    zips/<sha>.zip        downloaded with ``writeinto=`` (nats-py's plain get is O(n²))
    trees/<sha>/          extracted and pre-compiled; appears atomically (extract into a temp
                          folder, then rename), so a tree that exists is complete
    runs/<executor id>/<uuid>/   a run's working copy (its cwd); each executor process has
                          its own root, held with a flock on ``runs/<executor id>.lock``
                          for its lifetime, so executors sharing a work dir never delete each
                          other's folders: at start one removes only roots whose lock nobody
                          holds (their executor is gone)

A run's working copy, where runs have UIDs of their own: every file is a hardlink to the
cached tree (the executor's, read-only to runs: a run can neither write nor chmod it) and every
folder is the executor's with the run's group, mode 01770 (``hand_over``): the run may add
files, but the sticky bit keeps it from removing, renaming or replacing the shipped ones. So a
run can never change code that another run executes.

Where runs share the executor's UID: files under 1 MiB are copied, so a task that writes a
shipped file in place cannot change the cached tree; bigger files (models, data) are hardlinked
to save the copy, and checked after the run: if one was written in place, the cached tree is
dropped and the next run extracts the zip again. ``__pycache__`` files are hardlinked (Python
replaces them by rename, never in place); copies keep their mtime so the compiled files stay
valid even with PYTHONDONTWRITEBYTECODE set. The entrypoint itself is not compiled (a script
never is). (Such a run can write the cached trees themselves: no copy policy protects them.)

Creating and deleting folders is the dearest part of a short run on a journaling disk (each
mkdir and rmdir is a journal write), so a working copy that a run left exactly as it found it
is kept as a spare for the next run of the same zip; any other is deleted off the event loop.
"Exactly" is every entry's inode, owner, mode, size, mtime and ctime (a run can reset an mtime
with ``utime``, never a ctime; a file shared with other copies is judged without its ctime,
which their links change, but it is read-only to the run). A spare's folders go back to the
executor's group until the next run gets it. Run arguments files go to a tmpfs scratch folder
when there is one (/dev/shm): a file there costs microseconds, not a disk journal entry.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from broker import archive, names
from broker.connection import Bus

log = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{64}")
_WORKSPACE = re.compile(names.NAME_PATTERN)

HARDLINK_MIN_BYTES = 1 << 20
SPARES_PER_SHA = 8
# A tree with at most this many entries is copied and checked on the event loop (a thread hop
# costs more than the work); bigger ones in a worker thread.
INLINE_MAX_ENTRIES = 64
# A run-folder root without a lock file (an older layout) is removed once this old.
UNLOCKED_ROOT_MAX_AGE_S = 24 * 3600.0
# Every entry: inode, mode, owner, group, size (-1 for a folder), mtime, ctime (-1 for a file
# shared with other copies: their links change it).
Snapshot = dict[str, tuple[int, int, int, int, int, int, int]]
# A run's working copy: its folders (the executor's, with the run's group; sticky).
RUN_FOLDER_MODE = 0o1770


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
    def __init__(self, bus: Bus, work_dir: Path, scratch: Path, owner: str) -> None:
        self._bus = bus
        self.zips = work_dir / "zips"
        self.trees = work_dir / "trees"
        self.runs = work_dir / "runs" / owner
        self.scratch = scratch
        for folder in (self.zips, self.trees, self.runs.parent, self.scratch):
            folder.mkdir(parents=True, exist_ok=True)
        # Runs reach their working copy (0711: traverse, not list), never the caches, which
        # they use through it (hardlinks): zips and trees are the executor's alone.
        for folder, mode in ((self.zips, 0o700), (self.trees, 0o700), (self.runs.parent, 0o711)):
            os.chmod(folder, mode)
        self._owner_fd = _hold_root_lock(self.runs.parent / f"{owner}.lock")
        remove_stale_roots(self.runs.parent, keep=owner)
        if self.runs.exists():  # only if this id was used before by a process now gone
            shutil.rmtree(self.runs, ignore_errors=True)
        self.runs.mkdir(mode=0o711)
        os.chmod(self.runs, 0o711)
        self._locks: dict[str, asyncio.Lock] = {}
        self._spares: dict[str, list[RunFolder]] = {}
        self._entries: dict[str, int] = {}  # entries per tree, once copied
        # (workspace, sha) whose zip was found in that workspace's zips: a cached tree is
        # content, shared by every workspace holding the same zip, and handed only to those.
        self._held: set[tuple[str, str]] = set()

    async def tree(self, workspace: str, sha: str) -> Path:
        """The extracted, compiled files of one zip (fetched on first use from the zips of
        ``workspace``). ``sha`` comes from an orchestration record, which a user may write by
        hand: it must be a sha256, and the workspace must hold that zip, before its cached
        tree is used (another workspace's code is not reached by naming its sha)."""
        if not _SHA.fullmatch(sha) or not _WORKSPACE.fullmatch(workspace):
            raise ArtifactError(
                f"the orchestration names no valid zip ({sha[:80]!r} in {workspace[:80]!r}); "
                f"upload it again"
            )
        if (workspace, sha) not in self._held:
            try:
                held = await self._bus.zips.exists(workspace, sha)
            except Exception as exc:
                raise ArtifactError(f"could not look up the orchestration zip: {exc}") from exc
            if not held:
                raise ArtifactError(
                    f"workspace {workspace!r} holds no zip {sha[:12]}; upload the orchestration "
                    f"again"
                )
            self._held.add((workspace, sha))
        tree = self.trees / sha
        if tree.is_dir():
            return tree
        lock = self._locks.setdefault(sha, asyncio.Lock())
        async with lock:
            if tree.is_dir():
                return tree
            zip_path = await self._download(workspace, sha)
            await anyio.to_thread.run_sync(self._extract, zip_path, tree)
            log.info("extracted %s into %s", sha[:12], tree)
        return tree

    async def _download(self, workspace: str, sha: str) -> Path:
        path = self.zips / f"{sha}.zip"
        if path.is_file():
            return path
        partial = self.zips / f".{sha}.{uuid.uuid4().hex[:8]}.part"
        try:
            with partial.open("wb") as handle:
                await self._bus.zips.read_into(workspace, sha, handle)
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
            _read_only_to_others(staging)
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

    async def drop_tree(self, sha: str) -> None:
        """Forget a tree whose files a run changed in place (and its spare copies, which share
        those files); the next run extracts anew."""
        spares = self._spares.pop(sha, [])
        self._entries.pop(sha, None)
        await anyio.to_thread.run_sync(self._drop_tree, sha, [spare.path for spare in spares])

    def _drop_tree(self, sha: str, spares: list[Path]) -> None:
        for spare in spares:
            shutil.rmtree(spare, ignore_errors=True)
        tree = self.trees / sha
        trash = self.trees / f".{sha}.{uuid.uuid4().hex[:8]}.trash"
        try:
            os.rename(tree, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- per-run folders ---------------------------------------------------------------------
    async def make_run_folder(self, tree: Path, sha: str, *, link_all: bool = False) -> RunFolder:
        """A working copy of ``tree`` (a spare if one is left); ``link_all``: every file a
        hardlink to the tree's (for runs that cannot write the executor's files)."""
        spares = self._spares.get(sha)
        if spares:
            return spares.pop()
        folder = RunFolder(path=self.runs / uuid.uuid4().hex, sha=sha)
        if self._inline(sha):
            _copy_tree(tree, folder.path, folder.linked, link_all)
        else:
            await anyio.to_thread.run_sync(_copy_tree, tree, folder.path, folder.linked, link_all)
        return folder

    async def hand_over(self, folder: RunFolder, group: int | None) -> None:
        """Give the run its working copy: with ``group`` (the run's), every folder becomes
        the executor's with that group, mode 01770; then note the copy as the run gets it."""
        if self._inline(folder.sha):
            _hand_over(folder, group)
        else:
            await anyio.to_thread.run_sync(_hand_over, folder, group)
        self._entries[folder.sha] = len(folder.snapshot)

    def _inline(self, sha: str) -> bool:
        return self._entries.get(sha, INLINE_MAX_ENTRIES + 1) <= INLINE_MAX_ENTRIES

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

    async def release_run_folder(self, folder: RunFolder) -> Path | None:
        """Keep an untouched working copy as a spare; else return it for deletion."""
        spares = self._spares.setdefault(folder.sha, [])
        if len(spares) < SPARES_PER_SHA and (self.trees / folder.sha).is_dir():
            try:
                if len(folder.snapshot) <= INLINE_MAX_ENTRIES:
                    untouched = _reclaim(folder)
                else:
                    untouched = await anyio.to_thread.run_sync(_reclaim, folder)
            except OSError:
                untouched = False
            if untouched:
                spares.append(folder)
                return None
        return folder.path

    def args_file(self, key: str) -> Path:
        return self.scratch / f"{key}.json"

    def close(self, *, keep_runs: bool = False) -> None:
        """Remove the scratch folder and (unless kept for debugging) this executor's run
        folders; then let go of the root's lock."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not keep_runs:
            shutil.rmtree(self.runs, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.runs.parent / f"{self.runs.name}.lock").unlink()
        os.close(self._owner_fd)


def _hold_root_lock(path: Path) -> int:
    """Take (and keep) the exclusive flock that marks a run-folder root as in use. The file
    must still be the one at ``path`` once locked: a cleaner may have removed it meanwhile."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except OSError:
            pass
        os.close(fd)
    raise ArtifactError(f"could not lock {path}: is another executor using the same id?")


def remove_stale_roots(runs: Path, *, keep: str) -> None:
    """Remove the run-folder roots of executors that are gone: their lock file is not held
    (a flock dies with its process), or, with no lock file, the folder is over a day old."""
    try:
        entries = list(runs.iterdir())
    except OSError:
        return
    names = {entry.name for entry in entries}
    for entry in entries:
        if entry.name in (keep, f"{keep}.lock"):
            continue
        if entry.suffix == ".lock":
            _remove_if_unheld(entry, runs / entry.stem)
        elif entry.is_dir() and f"{entry.name}.lock" not in names:
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > UNLOCKED_ROOT_MAX_AGE_S:
                    shutil.rmtree(entry, ignore_errors=True)


def _remove_if_unheld(lock: Path, root: Path) -> None:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # held: that executor is alive
    try:
        log.info("removing run folders left by a stopped executor: %s", root)
        shutil.rmtree(root, ignore_errors=True)
        lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _read_only_to_others(root: Path) -> None:
    """Every file and folder of a cached tree is readable and never group/other-writable,
    whatever modes the zip carried: runs (under other UIDs) share its inodes through hardlinks.
    The trees folder itself is the executor's alone."""
    for folder, dirs, files in os.walk(root):
        for names_, readable in ((dirs, 0o555), (files, 0o444)):
            for name in names_:
                path = os.path.join(folder, name)
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                wanted = (mode | readable) & ~0o022
                if mode != wanted:
                    os.chmod(path, wanted)


def _hand_over(folder: RunFolder, group: int | None) -> None:
    if group is not None:
        _chown_folders(folder.path, os.getuid(), group)
    elif folder.snapshot:  # a spare, unchanged since its check
        return
    folder.snapshot = _snapshot(folder.path)


def _reclaim(folder: RunFolder) -> bool:
    """True if the run left its working copy exactly as it got it; then its folders go back
    to the executor's group (a later run with that UID must not reach a spare)."""
    if _snapshot(folder.path) != folder.snapshot:
        return False
    me = (os.getuid(), os.getgid())
    if any(entry[2:4] != me for entry in folder.snapshot.values()):
        _chown_folders(folder.path, *me)
    return True


def _chown_folders(root: Path, uid: int, gid: int) -> None:
    for path, _dirs, _files in os.walk(root):
        os.chown(path, uid, gid)
        os.chmod(path, RUN_FOLDER_MODE)


def _copy_tree(
    source: Path, dest: Path, linked: dict[Path, tuple[int, int]], link_all: bool = False
) -> None:
    dest.mkdir()
    in_cache = source.name == "__pycache__"
    with os.scandir(source) as entries:
        for entry in entries:
            target = dest / entry.name
            if entry.is_dir(follow_symlinks=False):
                _copy_tree(Path(entry.path), target, linked, link_all)
                continue
            st = entry.stat(follow_symlinks=False)
            if in_cache or link_all:
                os.link(entry.path, target)
            elif st.st_size >= HARDLINK_MIN_BYTES:
                os.link(entry.path, target)
                linked[target] = (st.st_size, st.st_mtime_ns)
            else:
                shutil.copy2(entry.path, target)


def _snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` with its inode, mode, owner, size, mtime and ctime (a
    folder's change when an entry is added, removed or renamed in it; nobody but the kernel
    sets a ctime)."""
    found: Snapshot = {"": _entry(root.stat(), folder=True)}
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
                found[entry.path] = _entry(st, folder=is_dir)
                if is_dir:
                    stack.append(Path(entry.path))
    return found


def _entry(st: os.stat_result, *, folder: bool) -> tuple[int, int, int, int, int, int, int]:
    size = -1 if folder else st.st_size
    ctime = st.st_ctime_ns if folder or st.st_nlink == 1 else -1
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, ctime)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
