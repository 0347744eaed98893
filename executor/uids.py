"""A pool of unprivileged UIDs for runs, like systemd's DynamicUser: each live run holds one
that no other live run on this host has.

A UID is held with an exclusive flock on ``<lock_dir>/<uid>.lock`` (host-wide, so executors
sharing a host never hand out the same UID; a flock dies with its process). UIDs that name an
account in /etc/passwd are skipped. Before a UID is handed out, every process still running
under it (a run's leftover that escaped everything else) is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pwd
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

from broker import names


class UidPoolExhausted(RuntimeError):
    """Every UID of the pool is held by a live run."""


def can_switch_uids() -> bool:
    """Root, or CAP_SETUID and CAP_SETGID in the effective set."""
    if os.geteuid() == 0:
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
            return bool(caps & (1 << 7)) and bool(caps & (1 << 6))  # CAP_SETUID, CAP_SETGID
    return False


def parse_range(text: str) -> range:
    """``61000-61999`` → the UIDs 61000..61999."""
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise ValueError(f"--run-uids wants FIRST-LAST, e.g. 61000-61999, not {text!r}") from None
    if not 0 < low <= high < 2**31:
        raise ValueError(f"--run-uids {text!r}: want 0 < FIRST <= LAST (and no root)")
    return range(low, high + 1)


def processes_of(uid: int) -> list[int]:
    """Processes whose real UID is ``uid`` (from their status: /proc/<pid> itself belongs to
    root once a process changed UID, as it is no longer dumpable)."""
    found = []
    wanted = f"Uid:\t{uid}\t"
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry.name}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if line.startswith(wanted):
                            found.append(int(entry.name))
                        break
    return found


RECENT_UIDS = 64  # released UIDs remembered for quick reuse (more than any executor's slots)
CLEAN = b"clean"  # a UID lock file's content once its holder swept the UID on release


def sweep(uid: int) -> int:
    """SIGKILL every process running as ``uid``; how many there were."""
    doomed = processes_of(uid)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(doomed)


class UidPool:
    def __init__(self, uids: range, lock_dir: Path = Path(names.RUN_UID_LOCK_DIR)) -> None:
        self.uids = uids
        self.lock_dir = lock_dir
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        taken = set()
        with contextlib.suppress(OSError):
            taken = {entry.pw_uid for entry in pwd.getpwall()}
        self._free = [uid for uid in uids if uid not in taken]
        self._held: dict[int, int] = {}  # uid → lock fd
        self._next = 0
        self._released: list[int] = []  # swept and let go by this pool, oldest first

    def acquire(self) -> int:
        # UIDs this pool let go (swept, their lock files "clean") first, newest first: handing
        # one out again needs no /proc scan; then the rest, round robin.
        count = len(self._free)
        order = [*reversed(self._released), *(
            self._free[(self._next + step) % count] for step in range(count)
        )]  # fmt: skip
        for uid in order:
            if uid in self._held:
                continue
            lock = self.lock_dir / f"{uid}.lock"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if uid in self._released:
                self._released.remove(uid)
            else:
                self._next = (self._free.index(uid) + 1) % count
            self._held[uid] = fd
            # The lock file says "clean" when its last holder swept the UID as it let it go:
            # nothing can run as it since (only the holder's runs use it), so the /proc scan is
            # skipped on the run's start path. A holder that died left it empty: sweep.
            if os.pread(fd, len(CLEAN), 0) != CLEAN:
                sweep(uid)
            os.ftruncate(fd, 0)
            return uid
        raise UidPoolExhausted(
            f"all {count} run UIDs of {self.uids.start}-{self.uids.stop - 1} are in use; "
            f"widen --run-uids"
        )

    def release(self, uid: int) -> None:
        sweep(uid)
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.pwrite(fd, CLEAN, 0)
            os.close(fd)
            self._released = [*self._released[-RECENT_UIDS:], uid]

    def close(self) -> None:
        for uid in list(self._held):
            self.release(uid)


def remove_files_of(uid: int, folders: Iterable[str], max_entries: int) -> int:
    """Remove what ``uid`` owns at the top of each folder (files, links, whole folders), looking
    at no more than ``max_entries`` entries of each; how many were removed."""
    removed = 0
    for folder in folders:
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in itertools.islice(entries, max_entries):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
    return removed
