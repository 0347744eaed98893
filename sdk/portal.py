"""The sync client's background event loop: an anyio blocking portal on the asyncio backend.

The portal thread starts on first use (``sdk.Client().in_task()`` never starts it) and stops
on ``close()``. A client left open is closed by an ``atexit`` hook: without it the interpreter
would hang at exit finalising the portal after its thread was frozen.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from typing import Any, TypeVar, TypeVarTuple, Unpack

from anyio.from_thread import BlockingPortal, start_blocking_portal

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_END = object()
_open: weakref.WeakSet[Portal] = weakref.WeakSet()


class Portal:
    def __init__(
        self,
        on_close: Callable[[], Awaitable[None]] | None = None,
        guard: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        # ``guard`` wraps every call: the client's refusal watch (a refused request raises
        # PermissionDenied at once instead of timing out).
        self._guard = guard
        self._lock = threading.Lock()
        self._manager: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._closed = False
        self._on_close = on_close

    def _running(self) -> BlockingPortal:
        with self._lock:
            if self._closed:
                raise RuntimeError("This client is closed; create a new sdk.Client().")
            if self._portal is None:
                self._manager = start_blocking_portal("asyncio", name="taskbus-sdk")
                self._portal = self._manager.__enter__()
                _open.add(self)
            return self._portal

    def call(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        """Run ``func(*args)`` on the loop and wait; Ctrl+C in the caller cancels it too."""
        future = self._running().start_task_soon(self._guarded, func, *args)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def _guarded(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        if self._guard is None:
            return await func(*args)
        async with self._guard():
            return await func(*args)

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator from this thread; closing early closes it on the loop."""
        try:
            while True:
                item = self.call(_next, items)
                if item is _END:
                    return
                yield item
        finally:
            if not self._closed:
                self.call(_aclose, items)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            manager, portal = self._manager, self._portal
            self._manager = self._portal = None
        _open.discard(self)
        if portal is None or manager is None:
            return
        try:
            if self._on_close is not None:
                portal.start_task_soon(self._on_close).result()
        finally:
            manager.__exit__(None, None, None)


@asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``contextlib.aclosing`` for anything typed as an async iterator."""
    try:
        yield items
    finally:
        await _aclose(items)


async def _aclose(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


async def _next(items: AsyncIterator[Any]) -> Any:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return _END


@atexit.register
def _close_all() -> None:
    for portal in list(_open):
        portal.close()
