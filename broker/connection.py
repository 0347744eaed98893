"""Connecting to NATS: one ``Bus`` holds the connection and every JetStream handle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from broker import names
from broker.errors import NotConnected
from broker.provision import provision
from broker.publisher import Publisher
from broker.settings import ConnectSettings

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


@dataclass
class Bus:
    """A live connection with the handles every component uses."""

    settings: ConnectSettings
    nc: NATS
    js: JetStreamContext
    publisher: Publisher  # the hot paths' JetStream publishes (fires, run records)
    orchestrations: KeyValue
    tasks: KeyValue
    runs: KeyValue
    executors: KeyValue
    scheduler: KeyValue
    control: KeyValue
    artifacts: ObjectStore
    # Called after every reconnect: watchers are recreated here (NATS-NOTES: a watcher kept
    # across a server restart stays blind for ~19 s).
    on_reconnect: list[Callback] = field(default_factory=list)
    on_disconnect: list[Callback] = field(default_factory=list)
    # Errors that reach only error_cb (slow consumer, permissions violation), for display.
    last_error: str = ""
    dropped_messages: int = 0

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        """Drain (flush what we published), else just close; never raises: the server may be
        gone already, and a component shutting down must still exit cleanly."""
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:
            log.debug("drain on close failed (%s); closing", exc)
            try:
                await self.nc.close()
            except Exception as close_exc:
                log.debug("close failed too (%s)", close_exc)


async def connect(
    settings: ConnectSettings,
    *,
    reconnect_forever: bool = False,
) -> Bus:
    """Connect, provision the JetStream resources (idempotent) and return a ``Bus``.

    The first attempt fails fast with ``NotConnected`` (each URL tried twice, 50 ms apart);
    once connected, the client reconnects for ever (daemons) or for two minutes (SDK).
    """
    bus_ref: list[Bus] = []
    first_error: list[str] = []

    async def error_cb(error: Exception) -> None:
        text = str(error) or type(error).__name__
        if not bus_ref:
            first_error.append(text)
            return
        bus = bus_ref[0]
        bus.last_error = text
        if isinstance(error, nats.errors.SlowConsumerError):
            bus.dropped_messages += 1
        log.warning("nats: %s", text)

    async def reconnected_cb() -> None:
        if bus_ref:
            url = bus_ref[0].nc.connected_url
            log.info("reconnected to %s", url.netloc if url else "?")
            await _run_callbacks(bus_ref[0].on_reconnect)

    async def disconnected_cb() -> None:
        if bus_ref:
            await _run_callbacks(bus_ref[0].on_disconnect)

    nc = NATS()
    try:
        await nc.connect(
            servers=settings.urls,
            name=settings.name,
            user=settings.user,
            password=settings.password,
            token=settings.token,
            user_credentials=settings.creds_file,
            connect_timeout=int(max(1, settings.connect_timeout_s)),
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,  # type: ignore[arg-type]
            error_cb=error_cb,
            reconnected_cb=reconnected_cb,
            **_ping_options(settings),
            disconnected_cb=disconnected_cb,
        )
    except Exception as exc:
        reason = first_error[-1] if first_error else (str(exc) or type(exc).__name__)
        raise NotConnected(settings.urls, _explain(reason)) from exc
    # The fast-fail options above were for the first attempt only (nats-py reads them anew
    # on every reconnect).
    nc.options["max_reconnect_attempts"] = -1 if reconnect_forever else 60
    nc.options["reconnect_time_wait"] = 2
    js = nc.jetstream()
    publisher = Publisher(nc)
    try:
        handles = await _provision_when_ready(js, settings)
        await publisher.start()
    except Exception:
        await nc.close()
        raise
    bus = Bus(settings=settings, nc=nc, js=js, publisher=publisher, **handles)
    bus_ref.append(bus)
    return bus


async def _run_callbacks(callbacks: list[Callback]) -> None:
    """Run the component's callbacks inside nats-py's reconnect loop. One that raises must not
    reach nats-py: it would count the reconnect as failed and leave two read loops behind."""
    for callback in list(callbacks):
        try:
            await callback()
        except Exception:
            log.exception("a reconnect/disconnect callback failed")


async def _provision_when_ready(js: JetStreamContext, settings: ConnectSettings) -> dict[str, Any]:
    """Provision, retrying while JetStream is not ready yet (a cluster still electing its
    meta leader answers with timeouts or 503 for a few seconds after it starts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.jetstream_wait_s
    while True:
        try:
            return await provision(js, replicas=settings.replicas)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if loop.time() > deadline:
                raise NotConnected(
                    settings.urls,
                    f"JetStream did not answer within {settings.jetstream_wait_s:.0f} s ({exc}); "
                    f"is the server started with JetStream (-js) and, in a cluster, are "
                    f"all nodes up",
                ) from exc
            log.info("JetStream not ready yet (%s); retrying", exc)
            await asyncio.sleep(0.5)


def _ping_options(settings: ConnectSettings) -> dict[str, Any]:
    if settings.ping_interval_s is None:
        return {}
    return {"ping_interval": settings.ping_interval_s, "max_outstanding_pings": 2}


def _explain(reason: str) -> str:
    lowered = reason.lower()
    if "refused" in lowered or "connect call failed" in lowered:
        return "nothing is listening there (connection refused)"
    if "authorization" in lowered:
        return "the server refused the credentials (check --user/--password/--creds)"
    return reason


__all__ = ["Bus", "connect", "names"]
