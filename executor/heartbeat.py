"""The executor's heartbeat, and the fence that kills its runs when heartbeats stop landing.

Heartbeat: an ``ExecutorRecord`` put in the executors bucket every interval, at least six
times per ack wait, each put bounded by a timeout, so a dead connection never stalls the loop.
Each put carries a TTL of half the ack wait (``ExecutorSettings.record_ttl_s``): the record of
an executor that stopped beating is gone before its runs are redelivered, and another executor
records them lost at once.

The lease: every confirmed heartbeat renews it (``on_lease``, the zygotes' watchdog) until
``lease_s`` after the heartbeat was sent, half a beat short of the record's expiry. A zygote
kills its children when the lease runs out, whatever the executor's event loop is doing (frozen,
partitioned, stalled): a run can only be retried elsewhere once its record expired, so its
processes here are gone by then.

Fencing (in the event loop, for the record and the logs): when no heartbeat put has been
confirmed by the server for half the ack wait (or the lease, if shorter), the executor kills
its own runs (with a short grace). This does not trust ``is_connected``: a silently dropped
connection keeps it true for as long as pings take to notice.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import anyio
import nats.errors

from broker import names
from broker.connection import Bus
from broker.models import ExecutorRecord, encode, utcnow
from executor.runner import RunJob
from executor.settings import ExecutorSettings

log = logging.getLogger(__name__)


class Heartbeat:
    """This executor's record in the executors bucket, kept fresh; and the fence on ``jobs``
    (the daemon's runs by key, read as they change)."""

    def __init__(
        self,
        settings: ExecutorSettings,
        bus: Bus,
        jobs: Mapping[str, RunJob],
        on_lease: Callable[[float], None] = lambda deadline: None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.jobs = jobs
        self.on_lease = on_lease  # called with the new deadline (time.monotonic) when renewed
        self._confirmed_at = time.monotonic()  # the last heartbeat the server stored
        self._fenced = False
        self._started_at = utcnow()

    @property
    def interval_s(self) -> float:
        return self.settings.beat_interval_s

    async def beat(self) -> None:
        """Put the heartbeat; once the server confirmed it, note the time it was sent."""
        settings = self.settings
        record = ExecutorRecord(
            id=settings.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pool=settings.pool,
            slots=settings.slots,
            running=sorted(names.run_token(key) for key in self.jobs),
            started_at=self._started_at,
            heartbeat_at=utcnow(),
        )
        sent = time.monotonic()
        headers = {names.TTL: str(settings.record_ttl_s)}
        subject = names.kv_subject(names.EXECUTORS, settings.id)
        with anyio.fail_after(max(0.5, self.interval_s)):
            await self.bus.js.publish(subject, encode(record), headers=headers)
        self._confirmed_at = sent
        self.on_lease(sent + settings.lease_s)
        if self._fenced:
            self._fenced = False
            log.info("heartbeats confirmed again after the fence")

    async def beat_loop(self) -> None:
        while True:
            await anyio.sleep(self.interval_s)
            try:
                await self.beat()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("heartbeat failed: %s", exc or type(exc).__name__)

    async def fence_loop(self) -> None:
        """Kill our runs once the server has confirmed no heartbeat for half the ack wait or the
        lease (a run claimed since then counts from its claim, itself a confirmed write)."""
        ack_wait = self.settings.ack_wait_s
        limit = min(ack_wait / 2, self.settings.lease_s)
        while True:
            await anyio.sleep(min(0.25, ack_wait / 8))
            now = time.monotonic()
            doomed = [
                job for job in self.jobs.values()
                if job.kill_reason is None and job.claim.claimed_at is not None  # not yet ours: no
                and now - max(self._confirmed_at, job.claim.claimed_at) > limit
            ]  # fmt: skip
            if not doomed:
                continue
            self._fenced = True
            log.warning("no heartbeat confirmed by NATS for %.1f s: killing %d runs (fencing)",
                        now - self._confirmed_at, len(doomed))  # fmt: skip
            for job in doomed:
                job.request_kill(
                    f"fenced: no contact with NATS for over {limit:.3g} s, so the run may be "
                    f"retried elsewhere",
                    grace_s=min(self.settings.kill_grace_s, ack_wait / 10),
                )
