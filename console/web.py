"""``taskbus console --web``: the same app in a browser through textual-serve.

textual-serve starts one console process per browser tab and has no authentication of its
own, so it binds to 127.0.0.1 unless told otherwise; put it behind an authenticating proxy
to share it. Credentials travel to the child processes in the environment, never on a
command line that ``ps`` would show.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from broker.settings import ConnectSettings

log = logging.getLogger(__name__)


def child_command(settings: ConnectSettings) -> str:
    # -P: each tab's console imports the installed package, never a `console/` folder that
    # happens to be in the directory the server was started from.
    command = [sys.executable, "-P", "-m", "console", "--url", ",".join(settings.urls)]
    return shlex.join(command)


def serve(settings: ConnectSettings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    from textual_serve.server import Server

    os.environ.update(settings.environment())
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving the console on %s:%s without authentication: anyone who can reach it "
            "can kill tasks; put it behind an authenticating proxy",
            host,
            port,
        )
    server = Server(child_command(settings), host=host, port=port, title="Taskbus console")
    server.serve()
