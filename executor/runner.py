"""One RunRequest on this executor: take the run, run it, record how it ended, then ack.

Taking is ``executor.claim``'s part: it decides whether the run starts here, and fences every
later write on this executor's claim.

Preparing: the cached code tree and virtualenv (``executor.artifacts``,
``executor.environments``), then the run's private space from ``executor.isolation`` holding
its arguments file, its own credential (``executor.credentials``, through
``Context.run_credentials``) and its workspace's connections (``executor.secrets``).

Running: see ``executor.process`` for the process contract. Its stdout and stderr are two pipes
read by ``executor.logstream.PipeReader``s (the trace "a print() reaching the console and the
SDK" starts there). From the claim on (the environment may take minutes to build) the request
is kept alive with ``in_progress()`` every third of the ack wait, and a kill ends the run at
once, even while it is still being prepared. On exit the last log batch (``eof``) is stored,
then the final status, then the request is acked. A run found taken over elsewhere publishes
no more log lines.

next: ``executor.claim`` (taking), then ``executor.isolation`` (the run's space and
environment), then ``executor.process`` (the launch).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Generic, TypeVar

import anyio
import anyio.abc
import msgspec
import nats.errors
from nats.aio.msg import Msg

from broker import names, store
from broker.limits import describe_bytes
from broker.models import RunRecord, RunRequest, utcnow
from broker.status import RunStatus
from executor.artifacts import ArtifactError, RunFolder, remove_tree
from executor.claim import STATUS_WRITE_GIVE_UP_S, Claim
from executor.context import Context
from executor.control import keep_alive
from executor.credentials import hide_credential
from executor.environments import Environment, EnvironmentBuildError
from executor.isolation import (
    ARGS_NAME,
    CONNECTIONS_NAME,
    CREDS_NAME,
    RunSpace,
    allowed_environment,
    public_urls,
)
from executor.logstream import LogStream, PipeReader
from executor.outcome import Outcome, outcome_of
from executor.process import Child, Launch, signal_group, stop_group
from executor.secrets import SecretsUnavailable

log = logging.getLogger(__name__)

A = TypeVar("A")
T = TypeVar("T")
Prepared = tuple[RunFolder, Environment | None, RunSpace]

PIPE_DRAIN_S = 2.0  # after the main process ended, how long leftover output may take
PID_WRITE_AFTER_S = 0.05


class RunJob:
    """One run on this executor, from its request to its ack: claimed (``Claim``), then
    prepared, started, supervised until it ends, and recorded."""

    def __init__(self, ctx: Context, msg: Msg, request: RunRequest) -> None:
        self.ctx = ctx
        self.claim = Claim(ctx, msg, request)
        self.request = request
        self.key = self.claim.key
        self.kill_reason: str | None = None
        self.kill_grace_s = ctx.settings.kill_grace_s
        # Set by a kill, and by the end of what the run's current phase waits for (its
        # preparation, then its process): one event per phase, no task per thing waited on.
        self._wake = anyio.Event()
        self._life: anyio.abc.TaskGroup | None = None
        self.pid = 0
        self._received = time.monotonic()

    @property
    def task_id(self) -> str:
        return self.request.task_id

    def request_kill(self, reason: str, *, grace_s: float | None = None) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
            if grace_s is not None:
                self.kill_grace_s = min(self.kill_grace_s, grace_s)
            self._wake.set()

    async def execute(self) -> None:
        claim = self.claim
        if not await claim.take(lambda: self.kill_reason):
            return
        # The run's life is one task group: its background tasks (the request's keep-alive, the
        # log's flusher, the preparation, the process's exit watch, the pid record) end with it.
        async with anyio.create_task_group() as life:
            self._life = life
            life.start_soon(
                keep_alive, lambda: claim.msg, self.ctx.settings.ack_wait_s / 3, self.key
            )
            try:
                await self._run()
            except Exception as exc:
                log.exception("run %s failed inside the executor", self.key)
                await self._finish(Outcome(RunStatus.FAILURE, None, f"executor error: {exc}"))
            finally:
                life.cancel_scope.cancel()

    # --- running -----------------------------------------------------------------------------
    async def _run(self) -> None:
        claim = self.claim
        logs = claim.log_stream()
        if self.ctx.secrets is not None:  # mask connection secrets
            self.ctx.secrets.attach(logs, claim.orchestration)
        if claim.note:
            logs.taskbus(claim.note)
        assert self._life is not None
        self._life.start_soon(logs.flush_loop)
        try:
            await self._prepare_and_run(logs)
        except Exception:
            if not logs.closing:
                await logs.close()  # the run's end was not recorded: its log still ends
            raise

    async def _prepare_and_run(self, logs: LogStream) -> None:
        # A kill while preparing ends the run at once; the preparation itself (an environment
        # build may take minutes) is not cut short: what it acquired is let go once it ends.
        assert self._life is not None
        preparation: Pending[LogStream, Prepared] = Pending(self._wake)
        self._life.start_soon(preparation.run, self._prepare, logs)
        await self._wake.wait()
        if not preparation.done.is_set():  # killed first
            await self._end(logs, Outcome(RunStatus.KILLED, None, self.kill_reason or ""), None)
            await preparation.done.wait()
            if preparation.value is not None:
                with anyio.CancelScope(shield=True):
                    await self._cleanup(*preparation.value)
            elif preparation.error is not None:
                log.debug("preparing %s failed after its kill: %r", self.key, preparation.error)
            return
        try:
            folder, environment, space = preparation.result()
        except (
            ArtifactError,
            EnvironmentBuildError,
            OSError,
            RuntimeError,
            SecretsUnavailable,
        ) as exc:
            await self._end(logs, Outcome(RunStatus.FAILURE, None, str(exc)), None)
            return
        try:
            await self._run_process(logs, folder, environment, space)
        finally:  # also when the executor is stopped meanwhile: what the run held is let go
            with anyio.CancelScope(shield=True):
                await self._cleanup(folder, environment, space)

    async def _prepare(self, logs: LogStream) -> Prepared:
        """The run's environment, working copy and private space (UID, HOME, TMPDIR, 0600
        arguments file, credential, cgroup); what was acquired is let go again when a later
        step fails."""
        ctx, orchestration, request = self.ctx, self.claim.orchestration, self.request
        assert orchestration is not None
        environment: Environment | None = None
        folder: RunFolder | None = None
        space: RunSpace | None = None
        try:
            workspace = names.workspace_token(orchestration.workspace)
            tree = await ctx.artifacts.tree(workspace, orchestration.sha)
            if ctx.environments.needed(orchestration.lock):  # its lock, or the base one
                environment = await ctx.environments.acquire(orchestration.lock)
                short = environment.key[:12]
                if environment.hit:
                    logs.taskbus(f"environment {short}: cache hit")
                else:
                    logs.taskbus(
                        f"environment {short}: cache miss, built in {environment.build_s:.2f} s"
                    )
            folder = await ctx.artifacts.make_run_folder(
                tree, orchestration.sha, link_all=ctx.isolation.pool is not None
            )
            space = ctx.isolation.open(
                self.key,
                memory_limit_bytes=request.memory_limit_bytes,
                cpu_limit=request.cpu_limit,
                copy=folder.path,
            )
            await ctx.artifacts.hand_over(folder, space.uid)
            space.write_private(ARGS_NAME, json.dumps(request.json_args))
            deadline = (
                utcnow() + timedelta(seconds=request.timeout_s) if request.timeout_s else None
            )
            creds = ctx.run_credentials(request, orchestration, deadline)
            if creds is not None:
                space.creds = space.write_private(CREDS_NAME, creds)
                hide_credential(logs, creds)
            if ctx.secrets is not None:  # the connections of the task's workspace
                text = ctx.secrets.run_file_text(orchestration)
                space.connections = space.write_private(CONNECTIONS_NAME, text)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cleanup(folder, environment, space)
            raise
        return folder, environment, space

    async def _run_process(
        self,
        logs: LogStream,
        folder: RunFolder,
        environment: Environment | None,
        space: RunSpace,
    ) -> None:
        ctx, request, orchestration = self.ctx, self.request, self.claim.orchestration
        assert orchestration is not None and self._life is not None
        self._wake = anyio.Event()  # before the check: a kill from now on sets this one
        if self.kill_reason:
            await self._end(logs, Outcome(RunStatus.KILLED, None, self.kill_reason), None)
            return
        script = folder.path / orchestration.entrypoint
        # The entry point comes from the orchestration record, which a user may write by
        # hand: it must be a file of this run's own working copy.
        if not _inside(script, folder.path):
            reason = f"the entry point {orchestration.entrypoint[:200]!r} is not a file of its zip"
            await self._end(logs, Outcome(RunStatus.FAILURE, None, reason), None)
            return
        env = allowed_environment(ctx.base_env)
        env.update({
            names.ENV_URL: public_urls(ctx.settings.connect.urls),
            names.ENV_TASK_ID: request.task_id,
            names.ENV_WALLAROO_TASK_ID: request.task_id,
            names.ENV_RUN_ID: request.run_id,
            names.ENV_ORCH_ID: request.orchestration_id,
            names.ENV_ORCH_SHA: orchestration.sha,
            names.ENV_ARGS_FILE: os.fspath(space.args_file),
            "PYTHONUNBUFFERED": "1",
            "HOME": os.fspath(space.home),
            "TMPDIR": os.fspath(space.tmp),
        })  # fmt: skip
        if space.creds is not None:
            env[names.ENV_CREDS] = os.fspath(space.creds)
        if space.connections is not None:
            env[names.ENV_CONNECTIONS_FILE] = os.fspath(space.connections)
        python = environment.python if environment else sys.executable
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = await ctx.launcher_for(environment).launch(
                Launch(python=python, script=script, cwd=script.parent, env=env,
                       stdout_fd=out_w, stderr_fd=err_w, confine=space.confine)
            )  # fmt: skip
        except Exception as exc:
            os.close(out_r)
            os.close(err_r)
            await self._end(logs, Outcome(RunStatus.FAILURE, None, f"could not start: {exc}"), None)
            return
        finally:
            os.close(out_w)
            os.close(err_w)
        started = time.monotonic()
        self.pid = child.pid
        logs.taskbus(
            f"started attempt {self.claim.attempt} on executor {ctx.settings.id} "
            f"(pid {child.pid}): python {orchestration.entrypoint}"
        )
        hunger = MemoryErrorWatch(request.memory_limit_bytes is not None)
        readers = [
            PipeReader(out_r, lambda lines: logs.add("stdout", lines)),
            PipeReader(err_r, hunger.watching(lambda lines: logs.add("stderr", lines))),
        ]
        log.info(
            "→ %s attempt %d pid %d (%.1f ms after the request reached the executor)",
            self.key, self.claim.attempt, child.pid, (started - self._received) * 1000,
        )  # fmt: skip
        recorder = anyio.CancelScope()
        self._life.start_soon(self._record_pid, child.pid, recorder)
        try:
            outcome = await self._supervise(child, space)
        except BaseException:  # cancelled (the executor stops): no process and no pipe stays
            signal_group(child.pid, signal.SIGKILL)
            for reader in readers:
                reader.close()
            raise
        finally:
            recorder.cancel()
        # The run is over: every process it started goes too, then the pipes drain.
        signal_group(child.pid, signal.SIGKILL)
        if space.cgroup is not None:
            if not await space.cgroup.kill(names.KILL_SETTLE_S):
                log.warning("%s: processes left in its cgroup after SIGKILL", self.key)
            if space.cgroup.oom_killed() and outcome.status is not RunStatus.KILLED:
                limit = describe_bytes(space.cgroup.memory_limit_bytes or 0)
                outcome = Outcome(RunStatus.FAILURE, outcome.exit_code,
                                  f"out of memory (limit {limit})")  # fmt: skip
        else:  # no cgroup: what detached from the group still runs as the run's UID
            ctx.isolation.sweep(space)
        with anyio.move_on_after(PIPE_DRAIN_S):
            for reader in readers:
                await reader.closed
        for reader in readers:
            reader.close()
        if space.cgroup is None and hunger.starved and outcome.status is RunStatus.FAILURE:
            # The rlimit fallback: an allocation past RLIMIT_AS fails inside the run (Python's
            # MemoryError, its traceback on stderr) instead of the kernel's OOM kill.
            limit = describe_bytes(request.memory_limit_bytes or 0)
            outcome = Outcome(
                RunStatus.FAILURE, outcome.exit_code, f"out of memory (limit {limit})"
            )
        await self._end(logs, outcome, time.monotonic() - started)

    async def _record_pid(self, pid: int, scope: anyio.CancelScope) -> None:
        """Record the pid once the run lasts (a short run gets it with its final status: one
        write less; ``scope`` is cancelled when it ends), fenced: a run taken over elsewhere
        is killed here."""
        with scope:
            await anyio.sleep(PID_WRITE_AFTER_S)
            await self._write_pid(pid)

    async def _write_pid(self, pid: int) -> None:
        def with_pid(record: RunRecord) -> RunRecord | None:
            if not self.claim.ours(record):
                return None
            return msgspec.structs.replace(record, pid=pid, updated_at=utcnow())

        try:
            if await self.claim.write(with_pid) is None:
                self.claim.lost = True
                self.request_kill("the run was taken over by another executor", grace_s=0.0)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not record pid of %s: %s", self.key, exc)

    async def _supervise(self, child: Child, space: RunSpace) -> Outcome:
        timeout = self.request.timeout_s
        assert self._life is not None
        exit: Pending[Child, int] = Pending(self._wake)  # its exit code, or why it is unknown
        self._life.start_soon(exit.run, _wait, child)
        try:
            with anyio.move_on_after(timeout):  # None: no timeout
                await self._wake.wait()
            if exit.done.is_set():
                code = exit.result()
                if getattr(child, "fenced", False):  # the zygote's watchdog: the lease ran out
                    self.request_kill(
                        f"fenced: the executor's lease ({self.ctx.settings.lease_s:.3g} s after "
                        f"its last confirmed heartbeat) ran out, so the run may be retried "
                        f"elsewhere",
                        grace_s=0.0,
                    )
                    return Outcome(RunStatus.KILLED, code, self.kill_reason or "")
                return outcome_of(code)
            if self.kill_reason is not None:
                status, reason = RunStatus.KILLED, self.kill_reason
            else:
                status, reason = RunStatus.TIMED_OUT, f"timeout {timeout}s"
            if space.cgroup is not None:  # detached processes get the grace too
                space.cgroup.signal(signal.SIGTERM)
            await stop_group(child, self.kill_grace_s)
            return Outcome(status, await child.wait(), reason)
        except Exception as exc:  # the zygote that forked it died: its exit code is unknown
            signal_group(child.pid, signal.SIGKILL)
            return Outcome(RunStatus.FAILURE, None, f"lost track of the process: {exc}")

    async def _end(self, logs: LogStream, outcome: Outcome, duration_s: float | None) -> None:
        took = f" in {duration_s:.2f} s" if duration_s is not None else ""
        code = f" (exit code {outcome.exit_code})" if outcome.exit_code is not None else ""
        redundant = outcome.reason == f"exit code {outcome.exit_code}"
        why = f": {outcome.reason}" if outcome.reason and not redundant else ""
        logs.taskbus(f"{outcome.status}{code}{took}{why}")
        if self.kill_reason and self.kill_reason.startswith("fenced"):
            await self._check_ownership()
        await logs.close()
        await self._finish(outcome)

    async def _check_ownership(self) -> None:
        """After a fence: is the run still this executor's (else its log stops here)?"""
        try:
            with anyio.fail_after(PIPE_DRAIN_S):
                found = await store.get(self.ctx.bus.runs, self.key, RunRecord)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("could not re-read %s after its fence: %s", self.key, exc)
            return
        if found is None or not self.claim.ours(found[0]):
            self.claim.lost = True

    async def _finish(self, outcome: Outcome) -> None:
        claim = self.claim
        now = utcnow()

        def final(record: RunRecord) -> RunRecord | None:
            if not claim.ours(record):
                return None
            return msgspec.structs.replace(
                record, status=outcome.status, exit_code=outcome.exit_code, pid=self.pid,
                reason=outcome.reason, finished_at=now, updated_at=now,
            )  # fmt: skip

        try:  # its request is kept alive meanwhile (in_progress), so it is not redelivered
            written = await claim.write_stored(final, STATUS_WRITE_GIVE_UP_S)
        except (nats.errors.Error, TimeoutError) as exc:
            log.error("could not record the end of %s: %s", self.key, exc)
            return
        if written is None:
            claim.lost = True
            log.warning("⊘ %s was taken over elsewhere; its %s is not recorded", self.key,
                        outcome.status)  # fmt: skip
            return
        await claim.done()
        elapsed = time.monotonic() - self._received
        arrow = "←" if outcome.status in (RunStatus.SUCCESS, RunStatus.FAILURE) else "⊘"
        log.info("%s %s %s%s in %.3f s", arrow, self.key, outcome.status,
                 f" ({outcome.reason})" if outcome.reason else "", elapsed)  # fmt: skip
        self.ctx.stats[str(outcome.status)] += 1

    async def _cleanup(
        self, folder: RunFolder | None, env: Environment | None, space: RunSpace | None
    ) -> None:
        if env is not None:
            env.release()
        artifacts = self.ctx.artifacts
        if space is not None:
            if space.cgroup is not None:
                await space.cgroup.kill(names.KILL_SETTLE_S)
            self.ctx.isolation.close_space(space)
        if folder is None:
            return
        changed = artifacts.changed_links(folder)
        if changed:
            log.warning("%s wrote shipped files in place (%s); dropping cached tree %s",
                        self.key, ", ".join(p.name for p in changed), folder.sha[:12])  # fmt: skip
            await artifacts.drop_tree(folder.sha)
        if self.ctx.settings.keep_run_dirs:
            return
        doomed = await artifacts.release_run_folder(folder)
        if doomed is None:
            return
        if self.ctx.background is None:
            await anyio.to_thread.run_sync(remove_tree, doomed)
        else:  # deleting costs disk journal time: off the loop, and not holding the run's slot
            self.ctx.background.start_soon(anyio.to_thread.run_sync, remove_tree, doomed)


class Pending(Generic[A, T]):
    """One step of a run (its preparation, its process's exit) as a task of the run's task
    group: its value or error once ``done``, and the run's current ``wake`` set then."""

    def __init__(self, wake: anyio.Event) -> None:
        self.done = anyio.Event()
        self._wake = wake
        self.value: T | None = None
        self.error: Exception | None = None

    async def run(self, step: Callable[[A], Awaitable[T]], argument: A) -> None:
        try:
            self.value = await step(argument)
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()
            self._wake.set()

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


def _inside(path: Path, folder: Path) -> bool:
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return resolved.is_file() and resolved.is_relative_to(folder.resolve())


async def _wait(child: Child) -> int:
    return await child.wait()


class MemoryErrorWatch:
    """Whether a run with a memory limit (and no cgroup to report an OOM kill) ended on
    Python's ``MemoryError``: the last line of its traceback on stderr."""

    def __init__(self, limited: bool) -> None:
        self.limited = limited
        self.starved = False

    def watching(self, sink: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
        """``sink``, noting a ``MemoryError`` line on the way."""

        def see(lines: list[str]) -> None:
            if self.limited and not self.starved:
                self.starved = any(line.startswith("MemoryError") for line in lines)
            sink(lines)

        return see
