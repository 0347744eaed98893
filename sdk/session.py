"""What every SDK object of one client shares: its connection (made on first use), the watch
that turns a refused action into ``PermissionDenied`` at once, and the connections' key.

``AsyncClient`` owns one ``Session``; orchestrations, tasks, runs, workspaces and connections
reach the bus through ``client.session`` instead of the client's internals.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio

from broker.connection import Bus, connect, refusals
from broker.secret_key import SecretKey
from broker.settings import ConnectSettings

# Closing drains the connection (pending publishes reach the server); bounded so a client
# whose server is gone still closes promptly.
CLOSE_TIMEOUT_S = 5.0


class Session:
    def __init__(self, settings: ConnectSettings) -> None:
        self.settings = settings
        self._bus: Bus | None = None
        self._key: SecretKey | None = None
        self._refusal_hooks: list[Callable[[str], None]] = []
        self._lock: asyncio.Lock | None = None
        self._closed = False

    async def bus(self) -> Bus:
        """The connection, made on first use (``NotConnected`` names the URL and what to do)."""
        if self._bus is not None:
            return self._bus
        if self._closed:
            raise RuntimeError("This client is closed; create a new one.")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._bus is None:
                self._bus = await connect(self.settings)
                self._bus.on_refusal.append(self._on_refusal)
        return self._bus

    def secret_key(self) -> SecretKey:
        """The key connection details are sealed with (``SecretKeyError`` when there is none)."""
        if self._key is None:
            self._key = SecretKey.load()
        return self._key

    def refusals(self) -> AbstractAsyncContextManager[None]:
        """While inside, an action the server refuses raises ``PermissionDenied`` at once
        (also when the connection is made inside)."""
        return refusals(self._refusal_hooks, self._refusal)

    def _refusal(self, subject: str) -> Exception:
        assert self._bus is not None  # a refusal comes from a connection
        return self._bus.refusal(subject)

    def _on_refusal(self, subject: str) -> None:
        for hook in list(self._refusal_hooks):
            hook(subject)

    async def close(self) -> None:
        self._closed = True
        bus, self._bus = self._bus, None
        if bus is not None:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await bus.close()


C = TypeVar("C", bound=type)


def refusing(cls: C) -> C:
    """Class decorator for the async SDK objects: each public coroutine method runs inside its
    client's refusal watch, so an ``AsyncClient`` caller gets ``PermissionDenied`` at once too
    (the sync ``Client`` gets it from its portal)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _refusing(member))
    return cls


def _refusing(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (in a task, reading the connections file)
            return await method(self, *args, **kwargs)
        own = self.__dict__.get("session")
        session: Session = own if isinstance(own, Session) else self._client.session
        async with session.refusals():
            return await method(self, *args, **kwargs)

    return watched
