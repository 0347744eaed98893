"""``taskbus console --web``: the same app in a browser through textual-serve, behind a token.

textual-serve starts one console process per browser tab and has no authentication of its
own; this server adds what Jupyter does:

- a random token in the URL it prints (``http://127.0.0.1:8000/?token=…``); every request
  without it — pages, static files, downloads, WebSockets — gets 403. The first request with
  it gets an HttpOnly, SameSite=Strict cookie and a redirect to the same page without the
  token, so the token leaves the address bar and the page's own requests carry the cookie;
- WebSocket upgrades whose ``Origin`` is not this server's own ``http://host:port`` are
  refused (another site open in the same browser cannot drive the console), and requests
  whose ``Host`` is not one of its own names are refused (DNS rebinding);
- the page loads nothing from outside the machine: its template (``webpage/``) serves the
  web font textual-serve ships, and a Content-Security-Policy header allows only this origin.

It binds to 127.0.0.1 unless told otherwise. Credentials travel to the child processes in
the environment, never on a command line that ``ps`` would show.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import os
import secrets
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from broker.errors import TaskbusError
from broker.settings import ConnectSettings

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

TITLE = "Taskbus console"
TOKEN_BYTES = 32  # 256 random bits, as Jupyter's token
TEMPLATES = Path(__file__).resolve().parent / "webpage"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("0.0.0.0", "::", "")


class WebConsoleError(TaskbusError, ValueError):
    """``console --web`` cannot serve: the port is taken or the address cannot be bound."""


def child_command(settings: ConnectSettings) -> str:
    # -P: each tab's console imports the installed package, never a `console/` folder that
    # happens to be in the directory the server was started from.
    command = [sys.executable, "-P", "-m", "console", "--url", ",".join(settings.urls)]
    return shlex.join(command)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebAccess:
    """Who may use the web console: the token, and the ``host:port`` names it answers as."""

    token: str
    hosts: frozenset[str]
    port: int

    @classmethod
    def for_address(cls, host: str, port: int, token: str | None = None) -> WebAccess:
        names = {_bracketed(host)}
        if _is_loopback(host) or host in WILDCARD:
            names.update(LOOPBACK_NAMES)
        if host in WILDCARD:  # reachable by this machine's own names
            names.update({socket.gethostname(), socket.getfqdn()})
        names.discard("")
        return cls(
            token=token or secrets.token_urlsafe(TOKEN_BYTES),
            hosts=frozenset(f"{name}:{port}".lower() for name in names),
            port=port,
        )

    @property
    def cookie(self) -> str:
        # Cookies are not kept apart by port: one name per port, so two consoles on one
        # machine do not overwrite each other's.
        return f"taskbus-console-{self.port}"

    def allows_host(self, host: str | None) -> bool:
        return host is not None and host.lower() in self.hosts

    def allows_origin(self, origin: str | None) -> bool:
        if origin is None or not origin.startswith("http://"):
            return False
        return origin.removeprefix("http://").lower() in self.hosts

    def has_token(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def url(self, host: str) -> str:
        shown = "127.0.0.1" if host in WILDCARD else _bracketed(host)
        return f"http://{shown}:{self.port}/?token={self.token}"


def content_policy(host: str) -> str:
    """Only this origin: scripts, styles, the font, images and the WebSocket."""
    return (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; font-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host}; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    )


def _forbidden(why: str) -> web.Response:
    from aiohttp import web

    return web.Response(status=403, text=f"403 Forbidden: {why}\n")


Handler = Callable[[Any], Awaitable[Any]]


def make_server(command: str, access: WebAccess, host: str) -> Any:
    """A textual-serve ``Server`` behind ``access`` (built here: textual-serve is optional)."""
    import aiohttp_jinja2
    from aiohttp import web
    from textual_serve.server import Server, to_int

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not access.allows_host(request.host):
            return _forbidden("unknown host name (open the URL `taskbus console --web` printed)")
        by_query = access.has_token(request.query.get("token"))
        if not (by_query or access.has_token(request.cookies.get(access.cookie))):
            return _forbidden("open the URL with the token `taskbus console --web` printed")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if (upgrade or request.path == "/ws") and not access.allows_origin(
            request.headers.get("Origin")
        ):
            return _forbidden("a WebSocket from another origin")
        if by_query and request.method == "GET" and request.path == "/":
            # Keep the token out of the address bar, history and screenshots: a cookie now.
            query = [(key, value) for key, value in request.query.items() if key != "token"]
            response = web.Response(
                status=302, headers={"Location": str(request.rel_url.with_query(query))}
            )
            response.set_cookie(
                access.cookie, access.token, httponly=True, samesite="Strict", path="/"
            )
            return response
        result: web.StreamResponse = await handler(request)
        return result

    async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = content_policy(request.host)
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"

    class TokenServer(Server):
        def initialize_logging(self) -> None:
            """The process's logging stays as set (no rich tracebacks with local variables)."""

        async def on_startup(self, app: web.Application) -> None:
            """The URL is printed by ``serve``, once."""

        async def _make_app(self) -> web.Application:
            app: web.Application = await super()._make_app()
            app.middlewares.append(guard)
            app.on_response_prepare.append(secure_headers)
            return app

        async def handle_index(self, request: web.Request) -> web.StreamResponse:
            # URLs from the Host the browser used (checked by ``guard``), so its cookie goes
            # along with every request of the page, whether it came by 127.0.0.1 or localhost.
            base = f"http://{request.host}"
            context = {
                "font_size": to_int(request.query.get("fontsize", "16"), 16),
                "app_websocket_url": f"ws://{request.host}/ws",
                "config": {"static": {"url": f"{base}/static/"}},
                "application": {"name": TITLE},
            }
            response: web.StreamResponse = aiohttp_jinja2.render_template(
                "app_index.html", request, context
            )
            return response

    return TokenServer(
        command, host=host, port=access.port, title=TITLE, templates_path=str(TEMPLATES)
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line ``WebConsoleError`` (port taken, bad address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise WebConsoleError(
            f"cannot serve the console on {_bracketed(host)}:{port}: {why}; "
            f"choose another with --port"
        ) from None


def serve(
    settings: ConnectSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    out: IO[str] | None = None,
) -> None:
    """Serve until Ctrl+C/SIGTERM; prints the URL with its token on ``out`` (stdout)."""
    from aiohttp import web

    sock = bind(host, port)
    port = sock.getsockname()[1]
    access = WebAccess.for_address(host, port, token)
    os.environ.update(settings.environment())
    if not _is_loopback(host):
        log.warning(
            "serving the console on %s:%s to the network: the token is all that guards it "
            "(and the traffic is not encrypted); prefer an SSH tunnel or a TLS proxy",
            host,
            port,
        )
    server = make_server(child_command(settings), access, host)
    stream = out or sys.stdout
    print(f"taskbus: console at {access.url(host)} (Ctrl+C stops)", file=stream, flush=True)
    server.initialize_logging()
    web.run_app(
        server._make_app(),
        sock=sock,
        handle_signals=True,
        print=None,
        access_log=None,
    )
