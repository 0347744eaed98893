"""The Taskbus console: a full-screen Textual app with live tasks, runs, executors and logs.

``run_console(settings)`` runs it in this terminal; ``web=True`` serves it in a browser
through textual-serve (localhost by default, behind a token: ``console.web``).
"""

from __future__ import annotations

from collections.abc import Callable

from broker.settings import ConnectSettings


def run_console(
    settings: ConnectSettings,
    *,
    web: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    store_full: Callable[[], str] | None = None,
) -> None:
    """``store_full``: the line of a nats-server this process runs while its store is full."""
    if web:
        from console.web import serve

        serve(settings, host=host, port=port)
        return
    from console.app import TaskbusApp

    app = TaskbusApp(settings)
    if store_full is not None:
        app.state.store_full = store_full
    app.run()


__all__ = ["run_console"]
