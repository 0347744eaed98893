"""``taskbus up`` (the embedded stack) and ``taskbus server`` (its nats-server alone).

``up`` starts, in order: the nats-server on the data directory, one executor and the
scheduler as child processes, then the console in the foreground — or, without a console, a
live line per run event (``console.launch.events``). Each daemon is supervised
(``console.launch.supervisor``): one that dies is started again with back-off, and its output
goes to ``<data-dir>/logs/<daemon>.log``. Ctrl+C or SIGTERM stops everything in reverse
order; the data stays, so the next ``up`` finds it all.

The whole stack is wired here, in one place: the URL and credentials every part gets.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

from broker import names
from broker.authority import Authority
from broker.connection import connect
from broker.errors import ServerError
from broker.roles import Role
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings, default_data_dir
from console.launch.daemons import child_env
from console.launch.supervisor import ChildProcess, Supervisor
from sdk.cli import FAILED, OK, error

SERVER = "nats-server"


def up(args: argparse.Namespace) -> int:
    from console import run_console
    from console.launch import events

    _on_stop_signals()
    data_dir = _data_dir(args)
    logs = data_dir / "logs"
    in_console = not args.no_console

    def notify(message: str) -> None:
        if in_console:  # the console owns the terminal; it shows the server or executor lost
            try:  # the data directory's disk may be the one that is full
                logs.mkdir(parents=True, exist_ok=True)
                with (logs / "up.log").open("a") as handle:
                    handle.write(f"taskbus: {message}\n")
            except OSError:
                pass
        else:
            _say(message)

    supervisors = [_start_server(args, notify)]
    url = _url(supervisors[0])
    server = supervisors[0].daemon
    assert isinstance(server, EmbeddedServer)
    authority = _authority(data_dir)
    settings = _as(authority, url, Role.OPERATOR)  # the console and the event printer
    _say(f"nats-server listening on {url} (data in {data_dir})")
    _say(f"credentials in {authority.root / 'creds'} (the SDK and CLI here find user.creds)")
    exports = []
    if data_dir != default_data_dir():
        exports.append(f"{names.ENV_DATA_DIR}={data_dir}")
    if url != names.DEFAULT_URL:
        exports.append(f"{names.ENV_URL}={url}")
    if exports:
        _say(f"for them to find it: export {' '.join(exports)}")
    try:
        executor_env = child_env(_as(authority, url, Role.EXECUTOR))
        executor_env[names.ENV_RUN_SIGNING_KEY] = str(authority.run_signing_key)
        # Where the connections' key is (<data dir>/auth/secret.key, made with the authority).
        executor_env[names.ENV_DATA_DIR] = str(data_dir)
        for what, argv, env in (
            ("executor", ["-m", "executor", "--url", url, "--slots", str(args.slots),
                          "--work-dir", str(data_dir / "executor")], executor_env),
            ("scheduler", ["-m", "broker.scheduler", "--url", url],
             child_env(_as(authority, url, Role.SCHEDULER))),
        ):  # fmt: skip
            log_path = logs / f"{what}.log"
            supervisors.append(Supervisor(what, _child(argv, log_path, env), log_path, notify))
        _say(f"started executor, scheduler (logs in {logs}); Ctrl+C stops")
        if in_console:  # its status bar says when the server's store is full
            run_console(settings, store_full=lambda: server.store_full)
        else:
            events.run(settings)
    except KeyboardInterrupt:
        pass
    finally:
        _quiet()
        codes = {supervisor.what: supervisor.stop() for supervisor in reversed(supervisors)}
        _say("stopped")
    failed = [what for what, code in codes.items() if code not in (0, -signal.SIGTERM)]
    if failed:
        error(f"{', '.join(reversed(failed))} exited with an error; see {logs}")
        return FAILED
    return OK


def server(args: argparse.Namespace) -> int:
    _on_stop_signals()
    supervisor = _start_server(args, _say)
    _say(
        f"nats-server listening on {_url(supervisor)} (data in {_data_dir(args)}; "
        f"its log in {supervisor.log_path})"
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        _quiet()
        supervisor.stop()
        _say("server stopped")
    return OK


def _say(message: str) -> None:
    print(f"taskbus: {message}", flush=True)  # noqa: T201 (the command's output)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


def _authority(data_dir: Path) -> Authority:
    """The data directory's authority: made on the first start (keys, JWTs, one credential
    per role, the connections' key), found on the next ones."""
    return Authority(data_dir / names.AUTH_DIR).ensure_local()


def _as(authority: Authority, url: str, role: Role) -> ConnectSettings:
    return ConnectSettings(
        urls=[url], creds_file=str(authority.creds_path(role)), name=f"taskbus-up-{role}"
    )


def _start_server(args: argparse.Namespace, notify: Callable[[str], None]) -> Supervisor:
    """Lock the data directory, start the supervised nats-server (authentication on, with the
    data directory's authority), provision its resources as the admin."""
    data_dir = _data_dir(args)
    _lock_data_dir(data_dir)
    authority = _authority(data_dir)
    log_path = data_dir / "logs" / f"{SERVER}.log"
    settings = ServerSettings(
        data_dir=data_dir,
        port=args.port,
        die_with_parent=True,
        log_file=log_path,
        config_file=authority.server_config,
        on_store=notify,  # the store filled (nats-server's words), or is writable again
    )
    server = EmbeddedServer(settings)
    if authority.adopt_store(server.store_dir):  # a data directory from before authentication
        notify("moved the existing store into the TASKBUS account (authentication is now on)")
    supervisor = Supervisor(SERVER, server.start, log_path, notify)
    try:
        asyncio.run(_provision(_as(authority, server.url, Role.ADMIN)))
    except BaseException:
        supervisor.stop()
        raise
    return supervisor


def _url(supervisor: Supervisor) -> str:
    server = supervisor.daemon
    assert isinstance(server, EmbeddedServer)
    return server.url


async def _provision(settings: ConnectSettings) -> None:
    bus = await connect(settings)  # the admin provisions on connect
    await bus.close()


def _child(argv: list[str], log_path: Path, env: dict[str, str]) -> Callable[[], ChildProcess]:
    """How the supervisor starts (and restarts) ``python -P <argv>``."""

    def start() -> ChildProcess:
        return ChildProcess(argv, log_path, env)

    return start


def _lock_data_dir(data_dir: Path) -> None:
    """One stack per data directory: a second nats-server on the same JetStream store, or a
    second executor on the same work dir, would corrupt the first one's state."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Private: daemon logs name every workspace's tasks and runs (runs reach the executor's
    # folders under it through their own mount namespace, not through this directory).
    data_dir.chmod(0o700)
    handle = (data_dir / "taskbus.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ServerError(
            f"{data_dir} is in use by {holder}. Stop that stack first, or give this one its "
            f"own --data-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"taskbus pid {os.getpid()}")
    handle.flush()
    _held_locks.append(handle)  # held until this process exits


_held_locks: list[IO[str]] = []


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) all stop us cleanly (SIGINT even when
    the shell that started us in the background set it to be ignored)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _terminate)


def _quiet() -> None:
    """While stopping, further signals must not cut the clean-up short."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
