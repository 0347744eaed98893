"""One RunRequest on this executor: take the run, run it, record how it ended, then ack.

Taking: the run record decides. Terminal → a duplicate delivery, ack. Killed task or a kill
request → ``killed``. Orchestration still packaging → nak with a delay; packaging failed →
``failure`` with its error. ``running`` under another executor → that executor was lost (its
ack wait passed without ``in_progress``): the attempt is recorded and retried if the request
allows, else ``failure``/"executor lost". Otherwise compare-and-set to ``running`` with this
executor's id and the attempt: every later write is fenced on that (status, executor, attempt),
so a run taken over elsewhere is never overwritten by a stale executor.

Running: see ``executor.process`` for the process contract. From the claim on (the environment
may take minutes to build) the request is kept alive with ``in_progress()`` every third of the
ack wait, and a kill ends the run at once, even while it is still being prepared. On exit the
last log batch (``eof``) is stored, then the final status, then the request is acked. A run
found taken over elsewhere publishes no more log lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from broker import names, store
from broker.connection import Bus
from broker.models import (
    ExecutorRecord,
    LogBatch,
    OrchestrationRecord,
    RunControl,
    RunRecord,
    RunRequest,
    TaskRecord,
    decode,
    utcnow,
)
from broker.status import RUN_TERMINAL, OrchestrationStatus, RunStatus
from executor.artifacts import ArtifactError, Artifacts, RunFolder, remove_tree
from executor.control import keep_alive, kill_reason
from executor.environments import Environment, EnvironmentBuildError, Environments
from executor.logstream import LogStream, PipeReader
from executor.process import Child, Launch, Launcher, signal_group, stop_group
from executor.settings import ExecutorSettings

log = logging.getLogger(__name__)

PIPE_DRAIN_S = 2.0  # after the main process ended, how long leftover output may take
WRITE_RETRY_S = 30.0  # how long a final status write is retried while NATS is away
PID_WRITE_AFTER_S = 0.05


class Outcome(NamedTuple):
    status: RunStatus
    exit_code: int | None
    reason: str


@dataclass
class Context:
    """What every run on this executor shares (built once by the daemon)."""

    settings: ExecutorSettings
    bus: Bus
    artifacts: Artifacts
    environments: Environments
    launcher_for: Callable[[Environment | None], Launcher]
    base_env: dict[str, str]
    stats: Counter[str] = field(default_factory=Counter)
    ready_orchestrations: dict[str, OrchestrationRecord] = field(default_factory=dict)


def outcome_of(code: int) -> Outcome:
    if code == 0:
        return Outcome(RunStatus.SUCCESS, 0, "")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return Outcome(RunStatus.FAILURE, code, f"killed by signal {name}")
    return Outcome(RunStatus.FAILURE, code, f"exit code {code}")


class RunJob:
    def __init__(self, ctx: Context, msg: Msg, request: RunRequest) -> None:
        self.ctx = ctx
        self.msg = msg  # the latest delivery: in_progress and the final ack go to it
        self.request = request
        self.key = names.run_key(request.task_id, request.run_id)
        self.kill_reason: str | None = None
        self.kill_grace_s = ctx.settings.kill_grace_s
        self._kill = asyncio.Event()
        self.record: RunRecord | None = None
        self.attempt = 0
        self.claimed_at: float | None = None  # monotonic; the claim was a confirmed write
        self.lost = False  # found taken over elsewhere: publish and record nothing more
        self.pid = 0
        self._received = time.monotonic()
        self._first_seq = 1
        self._note = ""
        self.orchestration: OrchestrationRecord | None = None

    @property
    def task_id(self) -> str:
        return self.request.task_id

    def request_kill(self, reason: str, *, grace_s: float | None = None) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
            if grace_s is not None:
                self.kill_grace_s = min(self.kill_grace_s, grace_s)
            self._kill.set()

    def _ours(self, record: RunRecord) -> bool:
        return (
            record.status is RunStatus.RUNNING
            and record.executor == self.ctx.settings.id
            and record.attempt == self.attempt
        )

    # --- taking ------------------------------------------------------------------------------
    async def execute(self) -> None:
        if not await self._take():
            return
        keeper = asyncio.ensure_future(
            keep_alive(lambda: self.msg, self.ctx.settings.ack_wait_s / 3, self.key)
        )
        try:
            await self._run()
        except Exception as exc:
            log.exception("run %s failed inside the executor", self.key)
            await self._finish(Outcome(RunStatus.FAILURE, None, f"executor error: {exc}"))
        finally:
            keeper.cancel()

    async def _take(self) -> bool:
        ctx, request = self.ctx, self.request
        bus = ctx.bus
        orchestration = ctx.ready_orchestrations.get(request.orchestration_id)
        run_found, task_found, control_found, orch_found = await asyncio.gather(
            store.get(bus.runs, self.key, RunRecord),
            store.get(bus.tasks, request.task_id, TaskRecord),
            store.get(bus.control, self.key, RunControl),
            _none() if orchestration else store.get(
                bus.orchestrations, request.orchestration_id, OrchestrationRecord
            ),
        )  # fmt: skip
        if run_found is None:
            log.warning("⊘ %s has no run record; dropping its request", self.key)
            await self._settle(self.msg.term)
            return False
        run = self.record = run_found[0]
        if run.status in RUN_TERMINAL:
            log.info("  %s already %s; duplicate delivery acked", self.key, run.status)
            await self._settle(self.msg.ack)
            return False
        if orchestration is None and orch_found is not None:
            orchestration = orch_found[0]
            if orchestration.status is OrchestrationStatus.READY:
                ctx.ready_orchestrations[orchestration.id] = orchestration
        self.orchestration = orchestration
        task = task_found[0] if task_found else None
        kill = (
            "the task was deleted"
            if task is None
            else kill_reason(task, control_found[0] if control_found else None)
        ) or self.kill_reason
        if run.status is RunStatus.RUNNING and not await self._previous_lost(run):
            return False
        if kill:
            return await self._end_untaken(RunStatus.KILLED, f"{kill} before the run started")
        if orchestration is None:
            return await self._end_untaken(
                RunStatus.FAILURE, f"orchestration {request.orchestration_id} no longer exists"
            )
        if orchestration.status in (
            OrchestrationStatus.PENDING_PACKAGING,
            OrchestrationStatus.PACKAGING,
        ):
            delay = min(0.05 * 2 ** (self.msg.metadata.num_delivered - 1), 5.0)
            log.debug("%s waits for packaging of %s (%.2fs)", self.key, orchestration.id, delay)
            await self._settle(lambda: self.msg.nak(delay=delay))
            return False
        if orchestration.status is OrchestrationStatus.ERROR:
            return await self._end_untaken(
                RunStatus.FAILURE,
                f"orchestration {orchestration.name!r} failed packaging: {orchestration.error}",
            )
        return await self._claim(run)

    async def _previous_lost(self, run: RunRecord) -> bool:
        """A redelivered run another executor had: False (nak) if that one is still alive."""
        bus = self.ctx.bus
        owner = (
            await store.get(bus.executors, run.executor, ExecutorRecord) if run.executor else None
        )
        if owner is not None and self.key in owner[0].running:
            log.info("  %s still runs on live executor %s; later", self.key, run.executor)
            await self._settle(lambda: self.msg.nak(delay=self.ctx.settings.ack_wait_s / 2))
            return False
        self._first_seq = await _last_log_seq(bus, self.request.task_id, self.request.run_id) + 1
        self._note = (
            f"attempt {run.attempt} was lost with executor {run.executor or '?'} "
            f"(no heartbeat, no ack); "
        )
        return True

    async def _claim(self, run: RunRecord) -> bool:
        settings = self.ctx.settings
        attempt = run.attempt
        if run.status is RunStatus.RUNNING:
            if run.attempt >= 1 + self.request.retries:
                self._note += "no retries left"
                log.info("↯ %s attempt %d lost with %s", self.key, run.attempt, run.executor)
                return await self._end_untaken(RunStatus.FAILURE, "executor lost")
            attempt = run.attempt + 1
            self._note += f"retrying as attempt {attempt} of {1 + self.request.retries}"
            log.info("↻ %s attempt %d lost with %s; retrying", self.key, run.attempt, run.executor)
        expected = (run.status, run.attempt)
        now = utcnow()

        def mutate(record: RunRecord) -> RunRecord | None:
            if (record.status, record.attempt) != expected:
                return None
            return msgspec.structs.replace(
                record, status=RunStatus.RUNNING, attempt=attempt, executor=settings.id, pid=0,
                exit_code=None, reason="", started_at=now, finished_at=None, updated_at=now,
            )  # fmt: skip

        if await self._write(mutate) is None:
            log.info("  %s was taken by another executor first", self.key)
            await self._settle(lambda: self.msg.nak(delay=settings.ack_wait_s))
            return False
        self.attempt = attempt
        self.claimed_at = time.monotonic()
        return True

    async def _end_untaken(self, status: RunStatus, reason: str) -> bool:
        """End a run that will not start here (killed first, failed packaging, lost)."""
        assert self.record is not None
        expected = (self.record.status, self.record.attempt)
        now = utcnow()
        logs = self._log_stream()
        if self._note:
            logs.taskbus(self._note)
        logs.taskbus(f"{status}: {reason}")
        await logs.close()

        def mutate(record: RunRecord) -> RunRecord | None:
            if (record.status, record.attempt) != expected:
                return None
            return msgspec.structs.replace(
                record, status=status, reason=reason, finished_at=now, updated_at=now
            )

        if await self._write(mutate) is not None:
            log.info("⊘ %s %s: %s", self.key, status, reason)
            self.ctx.stats[str(status)] += 1
        await self._settle(self.msg.ack)
        return False

    # --- running -----------------------------------------------------------------------------
    def _log_stream(self) -> LogStream:
        settings = self.ctx.settings
        assert self.record is not None
        # De-duplication ids name the writer: a stale executor's retries never collide with
        # its replacement's batches, which continue the same sequence numbers.
        writer = f"{settings.id}#{self.attempt or self.record.attempt}"
        stream = LogStream(
            self.ctx.bus, self.request.task_id, self.request.run_id,
            first_seq=self._first_seq, max_bytes=settings.max_log_bytes,
            linger_s=settings.log_linger_s, batch_lines=settings.log_batch_lines,
            writer=writer, owned=lambda: not self.lost,
        )  # fmt: skip
        stream.start()
        return stream

    async def _run(self) -> None:
        logs = self._log_stream()
        if self._note:
            logs.taskbus(self._note)
        preparing = asyncio.ensure_future(self._prepare(logs))
        killed = asyncio.ensure_future(self._kill.wait())
        try:
            await asyncio.wait({preparing, killed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            killed.cancel()
        if not preparing.done():  # killed while the environment or files were being prepared
            await self._end(logs, Outcome(RunStatus.KILLED, None, self.kill_reason or ""), None)
            try:
                folder, environment, _ = await preparing
                await self._cleanup(folder, environment)
            except Exception as exc:
                log.debug("preparing %s failed after its kill: %r", self.key, exc)
            return
        try:
            folder, environment, args_file = preparing.result()
        except (ArtifactError, EnvironmentBuildError, OSError) as exc:
            await self._end(logs, Outcome(RunStatus.FAILURE, None, str(exc)), None)
            return
        try:
            await self._run_process(logs, folder, environment, args_file)
        finally:
            await self._cleanup(folder, environment)

    async def _prepare(self, logs: LogStream) -> tuple[RunFolder, Environment | None, Path]:
        """The run's environment, working copy and arguments file; what was acquired is let go
        again when a later step fails."""
        ctx, orchestration = self.ctx, self.orchestration
        assert orchestration is not None
        environment: Environment | None = None
        folder: RunFolder | None = None
        try:
            tree = await ctx.artifacts.tree(orchestration.sha)
            if orchestration.lock:
                environment = await ctx.environments.acquire(orchestration.lock)
                short = environment.key[:12]
                if environment.hit:
                    logs.taskbus(f"environment {short}: cache hit")
                else:
                    logs.taskbus(
                        f"environment {short}: cache miss, built in {environment.build_s:.2f} s"
                    )
            folder = await ctx.artifacts.make_run_folder(tree, orchestration.sha)
            args_file = ctx.artifacts.args_file(self.key)
            args_file.write_text(json.dumps(self.request.json_args))
        except BaseException:
            await asyncio.shield(self._cleanup(folder, environment))
            raise
        return folder, environment, args_file

    async def _run_process(
        self,
        logs: LogStream,
        folder: RunFolder,
        environment: Environment | None,
        args_file: os.PathLike[str],
    ) -> None:
        ctx, request = self.ctx, self.request
        assert self.orchestration is not None
        if self.kill_reason:
            await self._end(logs, Outcome(RunStatus.KILLED, None, self.kill_reason), None)
            return
        script = folder.path / self.orchestration.entrypoint
        env = dict(ctx.base_env)
        env.update({
            names.ENV_URL: ",".join(ctx.settings.connect.urls),
            names.ENV_TASK_ID: request.task_id,
            names.ENV_RUN_ID: request.run_id,
            names.ENV_ORCH_ID: request.orchestration_id,
            names.ENV_ORCH_SHA: self.orchestration.sha,
            names.ENV_ARGS_FILE: os.fspath(args_file),
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        python = environment.python if environment else sys.executable
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = await ctx.launcher_for(environment).launch(
                Launch(python=python, script=script, cwd=script.parent, env=env,
                       stdout_fd=out_w, stderr_fd=err_w)
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
            f"started attempt {self.attempt} on executor {ctx.settings.id} (pid {child.pid}): "
            f"python {self.orchestration.entrypoint}"
        )
        readers = [
            PipeReader(out_r, lambda lines: logs.add("stdout", lines)),
            PipeReader(err_r, lambda lines: logs.add("stderr", lines)),
        ]
        log.info(
            "→ %s attempt %d pid %d (%.1f ms after the request reached the executor)",
            self.key, self.attempt, child.pid, (started - self._received) * 1000,
        )  # fmt: skip
        recorder = asyncio.ensure_future(self._record_pid(child.pid))
        try:
            outcome = await self._supervise(child)
        finally:
            recorder.cancel()
        # The run is over: leftover processes of its group go too, then the pipes drain.
        signal_group(child.pid, signal.SIGKILL)
        await asyncio.wait([r.closed for r in readers], timeout=PIPE_DRAIN_S)
        for reader in readers:
            reader.close()
        await self._end(logs, outcome, time.monotonic() - started)

    async def _record_pid(self, pid: int) -> None:
        """Record the pid once the run lasts (a short run gets it with its final status: one
        write less), fenced: a run taken over elsewhere is killed here."""
        await asyncio.sleep(PID_WRITE_AFTER_S)

        def with_pid(record: RunRecord) -> RunRecord | None:
            if not self._ours(record):
                return None
            return msgspec.structs.replace(record, pid=pid, updated_at=utcnow())

        try:
            if await self._write(with_pid) is None:
                self.lost = True
                self.request_kill("the run was taken over by another executor", grace_s=0.0)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not record pid of %s: %s", self.key, exc)

    async def _supervise(self, child: Child) -> Outcome:
        timeout = self.request.timeout_s
        exited = asyncio.ensure_future(child.wait())
        killed = asyncio.ensure_future(self._kill.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, killed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            killed.cancel()
        try:
            if exited in done:
                return outcome_of(exited.result())
            if killed in done:
                status, reason = RunStatus.KILLED, self.kill_reason or "killed"
            else:
                status, reason = RunStatus.TIMED_OUT, f"timeout {timeout}s"
            await stop_group(child, self.kill_grace_s)
            return Outcome(status, await exited, reason)
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
            found = await asyncio.wait_for(
                store.get(self.ctx.bus.runs, self.key, RunRecord), PIPE_DRAIN_S
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("could not re-read %s after its fence: %s", self.key, exc)
            return
        if found is None or not self._ours(found[0]):
            self.lost = True

    async def _finish(self, outcome: Outcome) -> None:
        now = utcnow()

        def final(record: RunRecord) -> RunRecord | None:
            if not self._ours(record):
                return None
            return msgspec.structs.replace(
                record, status=outcome.status, exit_code=outcome.exit_code, pid=self.pid,
                reason=outcome.reason, finished_at=now, updated_at=now,
            )  # fmt: skip

        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(WRITE_RETRY_S, self.ctx.settings.ack_wait_s)
        while True:
            try:
                written = await self._write(final)
                break
            except (nats.errors.Error, TimeoutError) as exc:
                if loop.time() > deadline:
                    log.error("could not record the end of %s: %s", self.key, exc)
                    return
                await asyncio.sleep(0.5)
        if written is None:
            self.lost = True
            log.warning("⊘ %s was taken over elsewhere; its %s is not recorded", self.key,
                        outcome.status)  # fmt: skip
            return
        await self._settle(self.msg.ack)
        elapsed = time.monotonic() - self._received
        arrow = "←" if outcome.status in (RunStatus.SUCCESS, RunStatus.FAILURE) else "⊘"
        log.info("%s %s %s%s in %.3f s", arrow, self.key, outcome.status,
                 f" ({outcome.reason})" if outcome.reason else "", elapsed)  # fmt: skip
        self.ctx.stats[str(outcome.status)] += 1

    async def _cleanup(self, folder: RunFolder | None, env: Environment | None) -> None:
        if env is not None:
            env.release()
        artifacts = self.ctx.artifacts
        artifacts.args_file(self.key).unlink(missing_ok=True)
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
        if doomed is not None:  # deleting costs disk journal time: off the event loop
            future = asyncio.get_running_loop().run_in_executor(None, remove_tree, doomed)
            _background.add(future)
            future.add_done_callback(_background.discard)

    # --- bus helpers -------------------------------------------------------------------------
    async def _write(self, mutate: Callable[[RunRecord], RunRecord | None]) -> RunRecord | None:
        """Compare-and-set (``store.update``); None when ``mutate`` declines (the record is no
        longer what this executor expects) or the record is gone."""
        declined = False

        def apply(record: RunRecord) -> RunRecord | None:
            nonlocal declined
            new = mutate(record)
            declined = new is None
            return new

        bus = self.ctx.bus
        written = await store.update(
            bus.runs, self.key, RunRecord, apply, publisher=bus.publisher, ttl=_retention(bus)
        )
        if written is None or declined:
            return None
        self.record = written
        return written

    async def _settle(self, action: Callable[[], object]) -> None:
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not ack/nak %s: %s", self.key, exc)


_background: set[asyncio.Future[None]] = set()


def _retention(bus: Bus) -> Callable[[RunRecord], float | None]:
    """A finished run's record expires after the retention period; an active one never."""
    retention_s = bus.settings.run_retention_s
    return lambda run: retention_s if run.status in RUN_TERMINAL else None


async def _none() -> None:
    return None


async def _last_log_seq(bus: Bus, task_id: str, run_id: str) -> int:
    """The sequence of the last stored line of a run (0: none), to continue its log."""
    try:
        msg = await bus.js.get_last_msg(
            names.LOGS_STREAM, names.logs_subject(task_id, run_id), direct=True
        )
    except NotFoundError:
        return 0
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("could not read the log of %s.%s: %s", task_id, run_id, exc)
        return 0
    if not msg.data:
        return 0
    lines = decode(LogBatch, msg.data).lines
    return lines[-1].seq if lines else 0
