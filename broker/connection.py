"""Connecting to NATS: one ``Bus`` holds the connection and every JetStream handle."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from broker import names, roles, scope, tokens
from broker.errors import CredentialError, NotConnected, PermissionDenied, UnusableCredential
from broker.provision import bind, provision
from broker.publisher import Publisher
from broker.settings import ConnectSettings
from broker.zipstore import ZipStore

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
    workspaces: KeyValue
    connections: KeyValue
    zips: ZipStore  # orchestration zips, by workspace and sha256
    # Called after every reconnect: watchers are recreated here (a watcher kept across a server
    # restart stays blind until nats-py notices missed heartbeats, many seconds later).
    on_reconnect: list[Callback] = field(default_factory=list)
    on_disconnect: list[Callback] = field(default_factory=list)
    # Called with the refused subject when the server refuses a publish or subscription:
    # nats-py only reports it to error_cb, and the refused request itself just times out.
    on_refusal: list[Callable[[str], None]] = field(default_factory=list)
    # Errors that reach only error_cb (slow consumer, permissions violation), for display.
    last_error: str = ""
    dropped_messages: int = 0
    creds: tokens.Creds | None = None  # what the credential file says of us (None: no file)

    def kv(self, bucket: str) -> KeyValue:
        """The handle of one of the buckets above, by its name (``broker.names``)."""
        for handle in (
            self.orchestrations,
            self.tasks,
            self.runs,
            self.executors,
            self.scheduler,
            self.control,
            self.workspaces,
            self.connections,
        ):
            if handle._name == bucket:
                return handle
        raise KeyError(bucket)

    def require_role(self, work: str, *allowed: str) -> None:
        """A daemon's first check: its credential's role is one that may do ``work`` (a
        server without authentication has no roles: anything goes)."""
        if self.creds is None or self.creds.role in (*allowed, roles.Role.ADMIN):
            return
        who = f"the {self.creds.role} credential {self.creds.name!r}"
        needed = allowed[0] if allowed else roles.Role.ADMIN
        raise PermissionDenied(
            work,
            who,
            f"Start it with a {needed} credential (`taskbus auth user NAME --role {needed}`; "
            f"`taskbus up` wrote {needed}.creds in its data directory's auth/creds).",
        )

    def refusals(self) -> AbstractAsyncContextManager[None]:
        """While inside, a refused action raises ``PermissionDenied`` at once."""
        return refusals(self.on_refusal, self.refusal)

    def refusal(self, subject: str) -> PermissionDenied:
        """The error for a refused subject, naming the credential and what would allow it."""
        return PermissionDenied(roles.describe(subject), *_credential_words(self.creds))

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


@asynccontextmanager
async def refusals(
    hooks: list[Callable[[str], None]], error: Callable[[str], Exception]
) -> AsyncIterator[None]:
    """Raise ``error(subject)`` as soon as a hook in ``hooks`` reports a refused subject while
    inside, instead of the refused request's timeout many seconds later (NATS reports a
    refusal only to ``error_cb``)."""
    refused: list[str] = []
    scope = anyio.CancelScope()

    def on_refusal(subject: str) -> None:
        refused.append(subject)
        scope.cancel()

    hooks.append(on_refusal)
    try:
        with scope:
            yield
    except Exception:
        if refused:  # the refusal is the story: not the cancelled request under it
            raise error(refused[0]) from None
        raise
    finally:
        hooks.remove(on_refusal)
    if refused:
        raise error(refused[0])


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
        refused = _refused_subject(text)
        if refused is not None:
            log.info("the server refused %s", refused)
            for callback in list(bus.on_refusal):
                callback(refused)
            return
        log.warning("nats: %s", text)

    async def reconnected_cb() -> None:
        if bus_ref:
            url = bus_ref[0].nc.connected_url
            log.info("reconnected to %s", url.netloc if url else "?")
            await _run_callbacks(bus_ref[0].on_reconnect)

    async def disconnected_cb() -> None:
        if bus_ref:
            await _run_callbacks(bus_ref[0].on_disconnect)

    try:
        creds = tokens.read_creds(settings.creds_file) if settings.creds_file else None
    except CredentialError as exc:
        raise UnusableCredential(
            settings.urls,
            str(exc),
            "Pass a .creds file issued for this cluster (`taskbus auth user NAME --role ROLE`).",
        ) from None
    if creds is not None and creds.expires_at is not None and creds.expires_at < time.time():
        raise NotConnected(
            settings.urls,
            f"the credential {settings.creds_file} expired",
            "Ask for a new one (`taskbus auth user NAME --role ROLE`).",
        )
    # nats-py bounds each TCP connect, not a TLS handshake that never completes (a plain
    # client at a TLS-only server waits for ever): the whole first attempt is bounded too.
    first_attempt_s = 2 * settings.connect_timeout_s * len(settings.urls) + 1
    for attempt in range(1, FIRST_CONNECT_TRIES + 1):
        nc = NATS()
        try:
            async with asyncio.timeout(first_attempt_s):
                await nc.connect(
                    servers=settings.urls,
                    name=settings.name,
                    user=settings.user,
                    password=settings.password,
                    token=settings.token,
                    user_credentials=settings.creds_file,
                    inbox_prefix=creds.inbox_prefix if creds is not None else "_INBOX",
                    tls=_tls_context(settings),
                    connect_timeout=int(max(1, settings.connect_timeout_s)),
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.05,  # type: ignore[arg-type]
                    error_cb=error_cb,
                    reconnected_cb=reconnected_cb,
                    **_ping_options(settings),
                    disconnected_cb=disconnected_cb,
                )
            break
        except TimeoutError as exc:
            await nc.close()
            reason = first_error[-1] if first_error else f"no answer within {first_attempt_s:.0f} s"
            raise NotConnected(settings.urls, *_explain(reason, settings)) from exc
        except Exception as exc:
            reason = first_error[-1] if first_error else (str(exc) or type(exc).__name__)
            if attempt < FIRST_CONNECT_TRIES and _cut_short(reason):
                # A server refusing a credential writes why, then closes: the close can win
                # the race to the client. Another try usually reads the reason.
                first_error.clear()
                continue
            raise NotConnected(settings.urls, *_explain(reason, settings)) from exc
    # The fast-fail options above were for the first attempt only (nats-py reads them anew
    # on every reconnect).
    nc.options["max_reconnect_attempts"] = -1 if reconnect_forever else 60
    nc.options["reconnect_time_wait"] = 2
    js = nc.jetstream()
    publisher = Publisher(nc)
    try:
        # Only the admin provisions (no other role may create streams): others bind to what
        # exists. A server without authentication has no roles, so its clients provision as
        # they always did.
        if creds is None or creds.role == roles.Role.ADMIN:
            handles = await _provision_when_ready(js, settings)
        else:
            handles = bind(js)
        await publisher.start()
    except Exception:
        await nc.close()
        raise
    bus = Bus(
        settings=settings,
        nc=nc,
        js=js,
        publisher=publisher,
        creds=creds,
        zips=ZipStore(js, publisher),
        **handles,
    )
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
    """Provision, retrying while JetStream is not ready yet: a cluster still electing its meta
    leader answers with timeouts or 503 for a few seconds after it starts, and a replicated
    bucket just created has no direct-get responders for a moment (provisioning is
    idempotent, so it starts over)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.jetstream_wait_s
    while True:
        try:
            return await provision(
                js, replicas=settings.replicas, run_retention_s=settings.run_retention_s
            )
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        ) as exc:
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


def _tls_context(settings: ConnectSettings) -> ssl.SSLContext | None:
    if settings.tls_ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(f"cannot use {settings.tls_ca_file!r} as the TLS CA: {exc}") from None


FIRST_CONNECT_TRIES = 3
_CUT_SHORT = ("connection reset", "broken pipe", "errno 104", "errno 32")


def _cut_short(reason: str) -> bool:
    lowered = reason.lower()
    return any(word in lowered for word in _CUT_SHORT)


_REFUSED = "permissions violation for "


def _refused_subject(text: str) -> str | None:
    """The subject of nats-py's 'permissions violation for publish to "x"' (it lower-cases
    the server's message), else None."""
    lowered = text.lower()
    at = lowered.find(_REFUSED)
    if at < 0:
        return None
    quoted = text[at + len(_REFUSED) :].split('"')
    return quoted[1] if len(quoted) > 1 else quoted[0].strip()


def _credential_words(creds: tokens.Creds | None) -> tuple[str, str]:
    """(who we are, what would allow more) for a PermissionDenied message."""
    if creds is None:
        return "this connection", "Connect with a credential whose role allows it."
    role = creds.role or "unknown"
    who = f"the {role} credential {creds.name!r}"
    if role == roles.Role.RUN:
        return who, (
            "A task run may read only its own task, orchestration and arguments; a task that "
            "must drive other tasks needs a user credential from its owner."
        )
    granted = scope.visible(creds)
    if granted is not None:
        who = f"{who} (granted workspaces {', '.join(granted) or 'none'})"
        return who, (
            "Another workspace's records need a grant of it (`taskbus auth user NAME --role "
            f"{role} --workspace W`, W repeated); other actions a role that allows them."
        )
    return who, (
        "Ask an admin for a credential with a role that allows it "
        "(`taskbus auth user NAME --role user|operator|executor|scheduler`)."
    )


def _explain(reason: str, settings: ConnectSettings) -> tuple[str, str | None]:
    """(why the first connect failed, what to do) for ``NotConnected``."""
    lowered = reason.lower()
    if "refused" in lowered or "connect call failed" in lowered:
        return "nothing is listening there (connection refused)", None
    if _cut_short(reason):
        return f"the server closed the connection ({reason})", (
            "It may require a credential or TLS: pass --creds FILE (or TASKBUS_CREDS; `taskbus "
            f"up` writes them to {_local_creds_dir()}), and for TLS use tls:// URLs with "
            "TASKBUS_TLS_CA."
        )
    if "certificate verify failed" in lowered:
        return "the server's TLS certificate is not signed by a CA we trust", (
            "Give the CA that signed it with TASKBUS_TLS_CA (`taskbus auth init --tls` wrote "
            "it to <auth dir>/tls/ca.pem), and use tls:// URLs."
        )
    if "no answer within" in lowered and not settings.tls_ca_file:
        return reason, (
            "If the server requires TLS, use tls:// URLs and give its CA with TASKBUS_TLS_CA "
            "(`taskbus auth init --tls` wrote it to <auth dir>/tls/ca.pem)."
        )
    if "expired" in lowered:
        return (
            f"the credential {settings.creds_file or ''} has expired",
            "Ask for a new one (`taskbus auth user NAME --role ROLE`).",
        )
    if "authorization" in lowered or "authentication" in lowered:
        if not (settings.creds_file or settings.user or settings.token):
            return "the server requires a credential and none was given", (
                "Pass --creds FILE (or set TASKBUS_CREDS). `taskbus up` writes one per role "
                f"to {_local_creds_dir()}/<role>.creds (user.creds for the SDK and CLI, "
                "operator.creds for the console); for a cluster, ask its admin for one "
                "(`taskbus auth user NAME --role user`)."
            )
        used = settings.creds_file or "the user/password or token given"
        return f"the server refused the credential ({used})", (
            "Check that it was issued for this cluster and has not been revoked."
        )
    return reason, None


def _local_creds_dir() -> str:
    from broker.settings import default_data_dir

    return str(default_data_dir() / names.AUTH_DIR / "creds")


__all__ = ["Bus", "CredentialError", "connect", "names"]
