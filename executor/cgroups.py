"""A cgroup per run (cgroup v1: pids, freezer, memory, cpu), so a run's processes can be
counted, limited and killed together however they detached (``setsid()``, double forks).

Layout: ``/sys/fs/cgroup/<controller>/taskbus/<executor id>/<run>`` in each controller. The
run's first process joins them itself before it runs user code (``executor.zygote.confine``),
so nothing it forks can escape; ``pids.max`` bounds how many processes it may have (a fork
bomb stays inside its run). Killing is freeze → SIGKILL every member → thaw: a frozen process
cannot fork, so no child is born between the listing and the kill.

Where the host lacks a writable v1 hierarchy (no root, cgroup v2 only, a read-only /sys)
``Cgroups.probe`` returns None and the executor falls back to a child subreaper and a sweep by
UID (``executor.isolation``); it says so at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from broker import names

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("pids", "freezer", "memory", "cpu")


@dataclass
class RunCgroup:
    """One run's cgroup in every controller."""

    paths: dict[str, Path]
    memory_limit_bytes: int | None = None

    @property
    def procs_files(self) -> list[str]:
        """Where the run's first process writes its pid to join."""
        return [str(path / "cgroup.procs") for path in self.paths.values()]

    def pids(self) -> list[int]:
        try:
            text = (self.paths["pids"] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(line) for line in text.split()]

    def signal(self, sig: signal.Signals) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def oom_killed(self) -> bool:
        """True when the kernel killed a member for going over the memory limit."""
        memory = self.paths["memory"]
        try:
            control = (memory / "memory.oom_control").read_text()
        except OSError:
            return False
        for line in control.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip() not in ("", "0"):
                return True
        return False

    async def kill(self, timeout_s: float) -> bool:
        """Freeze, SIGKILL every member, thaw; True once no member is left."""
        if not self.pids():  # the usual end of a run: nothing left to freeze
            return True
        state = self.paths["freezer"] / "freezer.state"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(OSError):
            state.write_text("FROZEN")
            while state.read_text().strip() != "FROZEN" and loop.time() < deadline:  # noqa: ASYNC110 (the kernel offers no event to wait on)
                await asyncio.sleep(names.CGROUP_POLL_S)
        while True:
            members = self.pids()
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                state.write_text("THAWED")
            if not members:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(names.CGROUP_POLL_S)

    def remove(self) -> None:
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                path.rmdir()


# An executor's id (``executor.settings``) ends in "-<pid>-<4 hex>": its parents outlive a
# SIGKILLed executor, and the next executor on the host removes them once that pid is gone.
_OWNER_PID = re.compile(r"-(\d+)-[0-9a-f]{4}$")


def _remove_stale(taskbus: Path, keep: str) -> None:
    """Remove the cgroup parents of executors of this host that died without closing them
    (empty of processes; a parent still holding one is left alone)."""
    for parent in taskbus.iterdir() if taskbus.is_dir() else []:
        found = _OWNER_PID.search(parent.name)
        if parent.name == keep or not parent.is_dir() or found is None:
            continue
        if _alive(int(found.group(1))):
            continue
        for child in [*(c for c in parent.iterdir() if c.is_dir()), parent]:
            with contextlib.suppress(OSError):  # EBUSY: processes left in it
                child.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Cgroups:
    """This executor's cgroup parent in every controller, and a child per run."""

    def __init__(self, parents: dict[str, Path]) -> None:
        self.parents = parents

    @classmethod
    def probe(cls, owner: str, root: Path = ROOT) -> tuple[Cgroups | None, str]:
        """This executor's parents, created; or None and why not."""
        parents: dict[str, Path] = {}
        for controller in CONTROLLERS:
            parent = root / controller / "taskbus" / owner
            try:
                parent.mkdir(parents=True, exist_ok=True)
                if not (parent / "cgroup.procs").exists():
                    raise OSError(f"{root / controller} is not a cgroup v1 hierarchy")
            except OSError as exc:
                for made in parents.values():
                    with contextlib.suppress(OSError):
                        made.rmdir()
                return None, f"no writable cgroup v1 {controller} controller ({exc})"
            parents[controller] = parent
            _remove_stale(parent.parent, keep=owner)
        return cls(parents), "cgroup v1 (pids, freezer, memory, cpu) per run"

    def create(
        self,
        name: str,
        *,
        memory_limit_bytes: int | None,
        cpu_limit: float | None,
        max_pids: int | None = None,
    ) -> RunCgroup:
        paths = {controller: parent / name for controller, parent in self.parents.items()}
        for path in paths.values():
            path.mkdir(exist_ok=True)
        group = RunCgroup(paths, memory_limit_bytes)
        if max_pids is not None:  # a fork bomb stays inside its run (fork fails with EAGAIN)
            (paths["pids"] / "pids.max").write_text(str(max_pids))
        if memory_limit_bytes is not None:
            memory = paths["memory"]
            (memory / "memory.limit_in_bytes").write_text(str(memory_limit_bytes))
            with contextlib.suppress(OSError):  # no swap accounting on this host
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_limit_bytes))
        if cpu_limit is not None:
            period = names.CPU_PERIOD_US
            (paths["cpu"] / "cpu.cfs_period_us").write_text(str(period))
            (paths["cpu"] / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpu_limit * period))))
        return group

    def close(self) -> None:
        """Remove this executor's parents (their runs' cgroups are gone by now)."""
        for parent in self.parents.values():
            for child in list(parent.iterdir()) if parent.is_dir() else []:
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
