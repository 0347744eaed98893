"""A run's user process: how it is started, awaited and stopped.

Every run is ``<python> <entrypoint>`` in its own session (so its own process group), with the
in-task environment, stdin on /dev/null and stdout/stderr on two pipes the executor reads. Two
launchers give that same contract: ``Spawner`` starts a fresh interpreter (fork+exec, then every
import of interpreter start-up), ``executor.zygotes`` forks one from a warm interpreter that has
done those imports already (``tests/bench/bench_runs.py`` measures both: with and without
``--no-zygote``). A process is awaited through a pidfd, not asyncio's child watcher (on Python
3.11 the default watcher adds a thread per child). Signals go to the whole group; "no such
process" counts as dead. A spawned child gets SIGKILL when the executor dies (Linux parent-death
signal); a zygote kills its children when the executor's socket closes.

next: ``executor.zygotes`` (the warm launcher), then ``executor.zygote`` (the forked child).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from broker.service import die_with_parent
from executor.zygote import confine


@dataclass(frozen=True, kw_only=True)
class Launch:
    """What to start: the same for every launcher."""

    python: str  # absolute interpreter path (a PATH shim costs ~95 ms)
    script: Path  # absolute path of the entrypoint
    cwd: Path
    env: Mapping[str, str]
    stdout_fd: int  # write ends of the output pipes; the launcher does not close them
    stderr_fd: int
    # Where the child goes before user code runs: cgroups, mounts, rlimits, its run UID
    # (``executor.zygote.confine``; built by ``executor.isolation``).
    confine: Mapping[str, Any] = field(default_factory=dict)


class Child(Protocol):
    """A started user process: its pid (= its process group id) and its exit code."""

    @property
    def pid(self) -> int: ...

    async def wait(self) -> int:
        """The exit code; negative for a signal (``-9`` for SIGKILL), as subprocess does."""
        ...


class Launcher(Protocol):
    async def launch(self, launch: Launch) -> Child: ...


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pgid reused by someone else's process: ours is gone
        return False
    return True


@dataclass(eq=False)
class SpawnedChild:
    """A child of this process, awaited through a pidfd (readable once it has exited)."""

    process: subprocess.Popen[bytes]
    _code: asyncio.Future[int] = field(init=False)

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._code = loop.create_future()
        self._pidfd = os.pidfd_open(self.process.pid)
        loop.add_reader(self._pidfd, self._exited)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _exited(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self.process.wait()  # already exited: returns at once and reaps
        if not self._code.done():
            self._code.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._code)


class Spawner:
    """Fork+exec a fresh interpreter for every run."""

    async def launch(self, launch: Launch) -> Child:
        spec = dict(launch.confine)

        def prepare() -> None:
            confine(spec)
            os.chdir(launch.cwd)  # after: a working directory under a cover sees beneath it
            # SIGKILL when the event loop's thread (it lives as long as the executor) ends;
            # after the UID switch, which clears the parent-death signal.
            die_with_parent(signal.SIGKILL)

        # A plain Popen (~0.4 ms): asyncio's subprocess API would add its child watcher.
        process = subprocess.Popen(  # noqa: ASYNC220
            [launch.python, str(launch.script)],
            stdin=subprocess.DEVNULL,
            stdout=launch.stdout_fd,
            stderr=launch.stderr_fd,
            env=dict(launch.env),
            start_new_session=True,
            close_fds=True,
            preexec_fn=prepare,
        )
        return SpawnedChild(process)


async def stop_group(child: Child, grace_s: float) -> None:
    """SIGTERM to the group, SIGKILL after ``grace_s``; returns once the main process ended."""
    signal_group(child.pid, signal.SIGTERM)
    with anyio.move_on_after(grace_s):
        await child.wait()
        return
    signal_group(child.pid, signal.SIGKILL)
    await child.wait()
