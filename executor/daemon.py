"""The executor daemon: takes runs and packaging jobs from the bus and reports on itself.

``Executor(settings, bus).run()`` (started by ``executor.service``), in one task group:
- a heartbeat ``ExecutorRecord`` in the executors bucket every interval (``executor.heartbeat``);
- the run-queue intake: one ``fetch(1)`` long-poll at a time while a slot is free (a
  ``fetch(n>1)`` holds its first message until the batch fills or the poll expires; a
  ``fetch(1)`` returns the moment one arrives), each run in its own task;
- the packaging intake, one job at a time;
- kill watching: core subscriptions on the tasks and control buckets' subjects (every KV put is
  a message there), re-checked after a reconnect (in a task of its own, never inside the
  client's reconnect callback);
- fencing: when no heartbeat put has been confirmed by the server for half the ack wait, the
  executor kills its own runs (``executor.heartbeat`` says why and how).

``stop(reason)`` (SIGINT/SIGTERM, through ``executor.service``): stop taking work, let running
runs finish for ``shutdown_grace_s``, then kill them (recorded as ``killed``, reason "executor
shut down"); ``stop(reason, now=True)`` (a second signal) kills at once. ``summary()`` is the
line logged at the end.

next: ``executor.runner`` (``_take_run`` decodes a request and runs a ``RunJob`` for it; the
launcher it gets, ``launcher_for``, is ``executor.process.Spawner`` or a warm interpreter from
``executor.zygotes``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from broker import names, requirements, store
from broker.authority import RunSigner
from broker.connection import Bus
from broker.models import PackageRequest, RunControl, RunRequest, TaskRecord, decode
from broker.secret_key import default_key_file
from broker.service import not_dumpable
from broker.settings import default_data_dir
from executor.artifacts import Artifacts
from executor.context import Context
from executor.control import keep_alive, kill_reason, quietly
from executor.credentials import RunCredentials, RunCredentialsFn, no_credentials
from executor.environments import Environment, Environments, with_reference_shim
from executor.heartbeat import Heartbeat
from executor.isolation import Isolation, allowed_environment
from executor.packaging import package, resolve_base
from executor.process import Launcher, Spawner
from executor.runner import RunJob
from executor.secrets import Secrets
from executor.settings import ExecutorSettings
from executor.zygotes import ZygotePool

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]


async def pull_subscription(
    js: JetStreamContext,
    *,
    stream: str,
    consumer: str,
    subject: str,
    ack_wait_s: float,
    max_ack_pending: int,
    max_deliver: int,
) -> JetStreamContext.PullSubscription:
    """Create or update the shared durable pull consumer, then bind to it."""
    config = js_api.ConsumerConfig(
        durable_name=consumer,
        filter_subject=subject,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_ack_pending=max_ack_pending,
        max_deliver=max_deliver,
    )
    await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(consumer=consumer, stream=stream)


def scratch_dir(settings: ExecutorSettings) -> Path:
    """Where per-run argument files go: tmpfs when the host has one (a file there costs
    microseconds), else the work dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm_scratch(settings.id)
    return settings.work_dir / "scratch" / settings.id


def shm_scratch(executor_id: str) -> Path:
    """An executor's scratch folder on tmpfs: one parent per user, so that runs sharing that
    UID are shown none of it (``executor.isolation.SharedPlan``)."""
    return Path("/dev/shm") / f"taskbus-{os.getuid()}" / executor_id


def hidden_folders(settings: ExecutorSettings) -> list[Path]:
    """What runs that share the executor's UID must not see: the folders of its credential
    and key files (the whole authority directory where they lie in one, as under `taskbus
    up`), the data directory (the server's store under `taskbus up`) and its HOME."""
    found = [settings.connect.creds_file, settings.run_signing_key, default_key_file()]
    folders = [default_data_dir(), Path(os.path.expanduser("~"))]  # "~" where there is none
    for path in (Path(p) for p in found if p and Path(p).exists()):
        authority = next((f for f in path.parents if f.name == names.AUTH_DIR), None)
        folders.append(authority or path.parent)
    return [f for f in folders if f.is_absolute() and f.is_dir() and f != Path("/")]


class Executor:
    def __init__(self, settings: ExecutorSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        os.umask(os.umask(0o022) | 0o022)  # caches never group/other-writable
        not_dumpable()  # its environment held TASKBUS_SECRET_KEY
        # The connections' key leaves os.environ here, before anything copies the environment.
        self.secrets = Secrets.from_environment(bus)
        # Zygotes and runs see no executor secret (a forked run's /proc/self/environ is its
        # zygote's): the allowlist, not os.environ; plus `import wallaroo` in a task.
        base_env = with_reference_shim(allowed_environment(os.environ))
        self.environments = Environments(settings.env_cache_dir, settings.env_cache_max_bytes)
        scratch = scratch_dir(settings)
        artifacts = Artifacts(bus, settings.work_dir, scratch, settings.id)
        self.isolation = Isolation.start(
            owner=settings.id, scratch=scratch, work_dir=settings.work_dir,
            env_dir=settings.env_cache_dir, run_uids=settings.run_uid_range,
            use_cgroups=settings.cgroups, max_pids=settings.max_run_pids,
            hidden=hidden_folders(settings),
        )  # fmt: skip
        run_credentials: RunCredentialsFn = no_credentials
        if settings.run_signing_key is not None:
            signer = RunSigner.load(settings.run_signing_key)
            run_credentials = RunCredentials(signer, settings.kill_grace_s)
        self.ctx = Context(
            settings=settings,
            bus=bus,
            artifacts=artifacts,
            environments=self.environments,
            launcher_for=self.launcher_for,
            base_env=base_env,
            isolation=self.isolation,
            secrets=self.secrets,
            run_credentials=run_credentials,
        )
        self.jobs: dict[str, RunJob] = {}
        self._zygotes = ZygotePool(base_env)
        self.heartbeat = Heartbeat(settings, bus, self.jobs, on_lease=self._zygotes.renew)
        self.packaged = 0
        self._stop = anyio.Event()
        self._stop_reason = ""
        self._slots = anyio.CapacityLimiter(settings.slots)
        self._package_slots = anyio.CapacityLimiter(1)
        self._waiting_scopes: set[anyio.CancelScope] = set()
        self._active = 0
        self._idle = anyio.Event()  # set when the last piece of work ends
        self._services: anyio.abc.TaskGroup | None = None
        self._spawner = Spawner()
        self._work: anyio.abc.TaskGroup | None = None
        self._packaging = anyio.CancelScope()

    # --- launching ---------------------------------------------------------------------------
    def launcher_for(self, environment: Environment | None) -> Launcher:
        if not self.settings.zygote:
            return self._spawner
        if environment is None:
            return self._zygotes.get(sys.executable)
        if self._zygotes.has(environment.python):
            return self._zygotes.get(environment.python)
        # The zygote keeps the environment in use (not evictable) for as long as it lives.
        fd = self.environments.share(environment)
        return self._zygotes.get(environment.python, on_close=lambda: os.close(fd))

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, reason: str, *, now: bool = False) -> None:
        if now:
            for job in list(self.jobs.values()):
                job.request_kill(f"the executor shut down ({reason})")
        if self._stop.is_set():
            return
        self._stop_reason = reason
        log.info("executor %s stopping (%s): no new work", self.settings.id, reason)
        self._stop.set()
        for scope in list(self._waiting_scopes):
            scope.cancel()

    async def load_base(self) -> None:
        """Resolve ``--base-requirements`` into the base lock every environment installs
        first (``InvalidArgument`` for a file that cannot be used), and say which is in force."""
        path = self.settings.base_requirements
        if path is None:
            return
        lock = await resolve_base(path, self.environments.index_url)
        self.environments.base_lock = lock
        pinned = [line.requirement for line in requirements.parse(lock, source="the base lock")]
        log.info(
            "base requirements from %s under every run's own: %s", path,
            ", ".join(map(str, pinned)) or "none (the file lists nothing)",
        )  # fmt: skip

    async def run(self) -> None:
        settings, bus = self.settings, self.bus
        await self.load_base()
        runq = await pull_subscription(
            bus.js, stream=names.RUNQ_STREAM, consumer=names.runq_consumer(settings.pool),
            subject=names.runq_subject(settings.pool), ack_wait_s=settings.ack_wait_s,
            max_ack_pending=settings.max_ack_pending, max_deliver=names.RUNQ_MAX_DELIVER,
        )  # fmt: skip
        pkgq = None
        if settings.package:
            pkgq = await pull_subscription(
                bus.js, stream=names.PKGQ_STREAM, consumer=names.PKGQ_CONSUMER,
                subject=names.PKGQ_SUBJECT, ack_wait_s=names.PKGQ_ACK_WAIT_S,
                max_ack_pending=settings.max_ack_pending, max_deliver=-1,
            )  # fmt: skip
        subscriptions = [
            await bus.nc.subscribe(names.kv_subject(names.TASKS), cb=self._on_task),
            await bus.nc.subscribe(names.kv_subject(names.CONTROL), cb=self._on_control),
        ]
        bus.on_reconnect.append(self._reconnected)
        if settings.zygote:
            await self._zygotes.warm(sys.executable)
        await self.heartbeat.beat()
        log.info(
            "executor %s ready: pool %r, %d slots, work dir %s, %s; isolation: %s",
            settings.id, settings.pool, settings.slots, settings.work_dir,
            "zygote launcher" if settings.zygote else "spawn launcher", self.isolation.summary,
        )  # fmt: skip
        try:
            async with anyio.create_task_group() as services:
                self._services = self.ctx.background = services
                services.start_soon(self.heartbeat.beat_loop)
                services.start_soon(self.heartbeat.fence_loop)
                services.start_soon(self.secrets.watch)
                await self.secrets.wait_ready()
                async with anyio.create_task_group() as work:
                    self._work = work
                    work.start_soon(self._intake, runq, self._slots, self._take_run)
                    if pkgq is not None:
                        work.start_soon(self._intake, pkgq, self._package_slots, self._package)
                    await self._stop.wait()
                    await self._drain()
                services.cancel_scope.cancel()
        finally:
            # Pull subscriptions are unsubscribed here: a late status message left in their
            # queue would hold the connection's drain for its whole timeout.
            for pull in (runq, pkgq):
                if pull is not None:
                    await quietly(pull.unsubscribe())
            for sub in subscriptions:
                await quietly(sub.unsubscribe())
            await quietly(bus.executors.delete(settings.id))
            self._zygotes.close()
            self.ctx.artifacts.close(keep_runs=settings.keep_run_dirs)
            self.isolation.close()

    def summary(self, elapsed_s: float) -> str:
        """The line logged at shutdown: why it stopped, its runs by outcome, packaging jobs."""
        stats = self.ctx.stats
        detail = ", ".join(f"{count} {status}" for status, count in sorted(stats.items()))
        return (
            f"executor {self.settings.id} stopped after {elapsed_s:.1f} s "
            f"({self._stop_reason or 'error'}): {sum(stats.values())} runs"
            f"{f' ({detail})' if detail else ''}, {self.packaged} packaged"
        )

    async def _drain(self) -> None:
        """Let running work finish for the grace period, then kill what is left."""
        grace = self.settings.shutdown_grace_s
        if self._active:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle.wait()
        if self.jobs:
            log.info("grace of %.0f s over: killing %d runs", grace, len(self.jobs))
            for job in list(self.jobs.values()):
                job.request_kill(f"the executor shut down ({self._stop_reason})")
        self._packaging.cancel()

    # --- intake ------------------------------------------------------------------------------
    async def _intake(
        self, sub: JetStreamContext.PullSubscription, slots: anyio.CapacityLimiter, handle: Handler
    ) -> None:
        """Take a slot, fetch one message into it, hand both to a task of the work group (the
        slot is borrowed on behalf of that piece of work and given back when it ends)."""
        assert self._work is not None
        while not self._stop.is_set():
            slot = object()
            with anyio.CancelScope() as waiting:
                self._waiting_scopes.add(waiting)
                try:
                    await slots.acquire_on_behalf_of(slot)
                finally:
                    self._waiting_scopes.discard(waiting)
            if waiting.cancelled_caught:
                return
            if self._stop.is_set():
                slots.release_on_behalf_of(slot)
                return
            try:
                msgs = await sub.fetch(1, timeout=self.settings.fetch_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                slots.release_on_behalf_of(slot)
                continue
            except Exception as exc:  # disconnected, or the consumer is being recreated
                slots.release_on_behalf_of(slot)
                log.debug("fetch failed: %r", exc)
                await anyio.sleep(0.25)
                continue
            if self._stop.is_set():
                for msg in msgs:
                    await quietly(msg.nak())
                slots.release_on_behalf_of(slot)
                return
            self._active += 1
            self._work.start_soon(self._guarded, handle, msgs[0], slots, slot)

    async def _guarded(
        self, handle: Handler, msg: Msg, slots: anyio.CapacityLimiter, slot: object
    ) -> None:
        try:
            await handle(msg)
        except Exception:
            log.exception("error handling %s", msg.subject)
        finally:
            self._active -= 1
            slots.release_on_behalf_of(slot)
            if not self._active:
                self._idle.set()

    async def _take_run(self, msg: Msg) -> None:
        try:
            request = decode(RunRequest, msg.data)
        except msgspec.DecodeError as exc:
            log.error("dropping a malformed run request: %s", exc)
            await quietly(msg.term())
            return
        key = request.key
        existing = self.jobs.get(key)
        if existing is not None:
            existing.claim.msg = msg  # redelivered while it runs here: answer the newest delivery
            return
        job = self.jobs[key] = RunJob(self.ctx, msg, request)
        try:
            await job.execute()
        finally:
            if self.jobs.get(key) is job:
                del self.jobs[key]

    async def _package(self, msg: Msg) -> None:
        try:
            request = decode(PackageRequest, msg.data)
        except msgspec.DecodeError as exc:
            log.error("dropping a malformed package request: %s", exc)
            await quietly(msg.term())
            return
        with self._packaging:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_alive, lambda: msg, names.PKGQ_ACK_WAIT_S / 3, msg.subject)
                try:
                    await package(self.bus, self.ctx.artifacts, self.environments, request)
                except Exception:
                    log.exception("packaging %s failed", request.orchestration_id)
                    await quietly(msg.nak(delay=5.0))
                    tg.cancel_scope.cancel()
                    return
                self.packaged += 1
                await quietly(msg.ack())
                tg.cancel_scope.cancel()
                return
        await quietly(msg.nak())  # shut down mid-way: another executor takes it over

    # --- kills -------------------------------------------------------------------------------
    async def _on_task(self, msg: Msg) -> None:
        task_key = msg.subject.removeprefix(names.kv_subject(names.TASKS, ""))
        jobs = [job for job in self.jobs.values() if job.request.task_key == task_key]
        if not jobs or not msg.data:
            return
        try:
            reason = kill_reason(decode(TaskRecord, msg.data), None)
        except msgspec.DecodeError:
            return
        if reason:
            for job in jobs:
                job.request_kill(reason)

    async def _on_control(self, msg: Msg) -> None:
        key = msg.subject.removeprefix(names.kv_subject(names.CONTROL, ""))
        job = self.jobs.get(key)
        if job is None or not msg.data:
            return
        try:
            reason = kill_reason(None, decode(RunControl, msg.data))
        except msgspec.DecodeError:
            return
        if reason:
            job.request_kill(reason)

    async def _reconnected(self) -> None:
        """Runs inside the client's reconnect handling: only start work, never await I/O."""
        if self._services is not None:
            self._services.start_soon(self._recheck_kills)

    async def _recheck_kills(self) -> None:
        """Kills sent while we were away."""
        for job in list(self.jobs.values()):
            try:
                task = await store.get(self.bus.tasks, job.request.task_key, TaskRecord)
                control = await store.get(self.bus.control, job.key, RunControl)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("could not re-check kills after a reconnect: %s", exc)
                return
            reason = kill_reason(task[0] if task else None, control[0] if control else None)
            if reason:
                job.request_kill(reason)
