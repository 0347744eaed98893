"""The sync client's background event loop: an anyio blocking portal on the asyncio backend.

The portal thread starts on first use (``sdk.Client().in_task()`` never starts it) and stops
on ``close()``. A client left open is closed by an ``atexit`` hook: without it the interpreter
would hang at exit finalising the portal after its thread was frozen. ``call()`` is bounded by
the client's ``request_timeout`` (``RequestTimeout``); ``wait()`` and ``iterate()``, for waits
and follows that take their own timeout, are not.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from functools import partial
from typing import Any, Generic, TypeVar, TypeVarTuple, Unpack

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from broker.errors import RequestTimeout

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_END = object()
# Ctrl+C: how long to wait for the interrupted call to unwind on the loop (a cancelled read
# returns at once; this only bounds a clean-up that hangs).
CANCEL_WAIT_S = 5.0
_open: weakref.WeakSet[Portal] = weakref.WeakSet()


class Portal:
    def __init__(
        self,
        on_close: Callable[[], Awaitable[None]] | None = None,
        timeout_s: float | None = None,
        guard: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.timeout_s = timeout_s  # bounds each call(); None: unbounded
        # ``guard`` wraps every call: the client's refusal watch (a refused request raises
        # PermissionDenied at once instead of timing out).
        self._guard = guard
        self._lock = threading.Lock()
        self._manager: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._closed = False
        self._on_close = on_close
        # Async iterators being driven by iterate(): close() closes them before the client's
        # connection (a loop left by Ctrl+C in its body is not closed until collected).
        self._iterating: set[AsyncIterator[Any]] = set()

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
        """Run ``func(*args)`` on the loop and wait, at most ``timeout_s`` (then
        ``RequestTimeout``); Ctrl+C in the caller cancels it too."""
        timeout_s = self.timeout_s
        if timeout_s is None:
            return self.wait(func, *args)
        return self.wait(_bounded, timeout_s, lambda: func(*args))

    def wait(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        """``call()`` without the request timeout: for waits that take their own timeout."""
        portal = self._running()
        call = _Call(self._guarded, func, *args)
        try:
            return portal.start_task_soon(call.run).result()
        except BaseException:
            call.cancel(portal)
            raise

    async def _guarded(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        if self._guard is None:
            return await func(*args)
        async with self._guard():
            return await func(*args)

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator from this thread; closing early closes it on the loop."""
        self._iterating.add(items)
        try:
            while True:
                item = self.wait(_next, items)
                if item is _END:
                    return
                yield item
        finally:
            if not self._closed and items in self._iterating:
                self._iterating.discard(items)
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
            for items in list(self._iterating):
                self._iterating.discard(items)
                with contextlib.suppress(Exception):  # it ends with the connection anyway
                    portal.start_task_soon(_aclose, items).result(CANCEL_WAIT_S)
            if self._on_close is not None:
                portal.start_task_soon(self._on_close).result()
        finally:
            manager.__exit__(None, None, None)


class _Call(Generic[T]):
    """One call onto the loop that the calling thread can cancel, and wait for, even when
    Ctrl+C came before it had the call's future (``start_task_soon`` itself blocks until the
    loop has taken the task). Waiting matters: an async generator the call was advancing
    cannot be closed before it stops running (``RuntimeError: aclose(): asynchronous
    generator is already running``)."""

    def __init__(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> None:
        self._start: Callable[[], Awaitable[T]] = partial(func, *args)
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False  # read and written on the loop only
        self._finished = threading.Event()

    async def run(self) -> T:
        try:
            with anyio.CancelScope() as self._scope:
                if self._cancelled:
                    self._scope.cancel()
                return await self._start()
            raise anyio.get_cancelled_exc_class()("cancelled by the calling thread")
        finally:
            self._finished.set()

    def _cancel_on_loop(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def cancel(self, portal: BlockingPortal) -> None:
        """Cancel the call and wait (bounded) until it has unwound on the loop."""
        with contextlib.suppress(Exception):  # the portal is stopping: nothing left to cancel
            portal.call(self._cancel_on_loop)
        self._finished.wait(CANCEL_WAIT_S)


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


async def _bounded(timeout_s: float, call: Callable[[], Awaitable[T]]) -> T:
    with anyio.move_on_after(timeout_s):
        return await call()
    raise RequestTimeout(
        f"The server did not answer within request_timeout={timeout_s:g} s. Check that it is "
        f"running and reachable, or create the client with a longer request_timeout."
    )


async def _next(items: AsyncIterator[Any]) -> Any:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return _END


@atexit.register
def _close_all() -> None:
    for portal in list(_open):
        portal.close()
