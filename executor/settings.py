"""The executor's settings: one typed object, built from the command line or the environment."""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker import names
from broker.options import add_connection_options
from broker.settings import ConnectSettings, default_data_dir
from executor.uids import parse_range


def _default_id() -> str:
    """``<host>-<pid>-<4 hex>``: unique per process, readable in the console, a valid KV key."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    connect: ConnectSettings = field(default_factory=ConnectSettings)
    id: str = field(default_factory=_default_id)
    slots: int = 4  # runs at once
    pool: str = names.DEFAULT_POOL
    work_dir: Path = field(default_factory=lambda: default_data_dir() / "executor")
    # Virtualenvs built from pinned locks; least recently used ones go past this size.
    env_dir: Path | None = None  # default: <work_dir>/envs
    env_cache_max_bytes: int = 5 << 30
    # The run queue's ack wait; the consumer is shared by the pool, so every executor of a
    # pool should use the same value (the last one to start sets it).
    ack_wait_s: float = names.RUNQ_ACK_WAIT_S
    # How many runs of the whole pool may be unacked at once (JetStream stops delivering
    # silently past it): far above any pool's total slots.
    max_ack_pending: int = 10_000
    kill_grace_s: float = 5.0  # SIGTERM → SIGKILL on timeout or kill
    shutdown_grace_s: float = 10.0  # SIGTERM/SIGINT: how long running runs may finish
    max_log_bytes: int = 64 << 20  # per run; output past it is dropped (the log says so)
    log_linger_s: float = 0.002  # a log batch waits this long for more lines
    log_batch_lines: int = 500  # ... or is published once it has this many
    heartbeat_interval_s: float = names.HEARTBEAT_INTERVAL_S
    fetch_timeout_s: float = 0.5  # one long-poll pull request; also bounds shutdown
    # Fork runs from a warm interpreter per environment instead of spawning a fresh one (which
    # pays the interpreter's start-up and imports); both give the same process contract.
    zygote: bool = True
    keep_run_dirs: bool = False  # keep each run's working copy after it ends (debugging)
    # Packaging resolves requirements for this executor's interpreter.
    package: bool = True  # take PackageRequests (an executor may leave that to others)
    # Where the executor may switch UIDs, each run gets one of these ("none": share ours).
    run_uids: str = field(default_factory=lambda: os.environ.get(names.ENV_RUN_UIDS) or
                          names.DEFAULT_RUN_UIDS)  # fmt: skip
    cgroups: bool = True  # a cgroup per run where the host allows (else a subreaper + sweeps)
    max_run_pids: int = names.DEFAULT_MAX_RUN_PIDS  # processes and threads per run at once
    # The run role's signing key (`taskbus auth init` wrote it as signing/run.nk): with it every
    # run gets its own credential; without it (a server without authentication) none.
    run_signing_key: Path | None = field(
        default_factory=lambda: (
            Path(os.environ[names.ENV_RUN_SIGNING_KEY])
            if os.environ.get(names.ENV_RUN_SIGNING_KEY)
            else None
        )
    )

    # The operator's base requirements file: resolved once at start into a lock that every
    # task environment installs first, the orchestration's own lock over it (its pins win).
    base_requirements: Path | None = field(
        default_factory=lambda: (
            Path(os.environ[names.ENV_BASE_REQUIREMENTS])
            if os.environ.get(names.ENV_BASE_REQUIREMENTS)
            else None
        )
    )

    def __post_init__(self) -> None:
        self.run_uid_range  # noqa: B018 (a bad range is refused when the settings are made)
        if not names.MIN_ACK_WAIT_S <= self.ack_wait_s <= names.MAX_ACK_WAIT_S:
            raise ValueError(
                f"the ack wait must be between {names.MIN_ACK_WAIT_S:g} and "
                f"{names.MAX_ACK_WAIT_S:g} seconds, not {self.ack_wait_s:g}"
            )

    @property
    def beat_interval_s(self) -> float:
        """How often the heartbeat is written: at least six times per ack wait."""
        return min(self.heartbeat_interval_s, self.ack_wait_s / 6)

    @property
    def record_ttl_s(self) -> int:
        """How long the server keeps a heartbeat: past it, the executor counts as lost."""
        return names.executor_record_ttl_s(self.ack_wait_s)

    @property
    def lease_s(self) -> float:
        """How long after sending its last confirmed heartbeat the executor's user processes
        may run: half a beat short of that heartbeat's TTL, so they are killed (by the zygote,
        whatever the executor's own state) before the record expires and a new attempt can
        start elsewhere."""
        return self.record_ttl_s - self.beat_interval_s / 2

    @property
    def run_uid_range(self) -> range | None:
        if self.run_uids.strip().lower() in ("none", "off", ""):
            return None
        return parse_range(self.run_uids)

    @property
    def env_cache_dir(self) -> Path:
        return self.env_dir or self.work_dir / "envs"

    @classmethod
    def from_env(
        cls, *, args: argparse.Namespace | None = None, **overrides: object
    ) -> ExecutorSettings:
        """The environment (and the connection options in ``args``), then ``overrides``."""
        url = overrides.pop("url", None)
        # Pings find a silently dropped connection: a few per ack wait (fencing itself rests on
        # confirmed heartbeats, see executor.daemon).
        ack_wait = overrides.get("ack_wait_s") or names.RUNQ_ACK_WAIT_S
        ping_interval_s = min(5.0, max(1.0, float(ack_wait) / 6))  # type: ignore[arg-type]
        if args is not None:
            connect = ConnectSettings.from_args(
                args, name="taskbus-executor", ping_interval_s=ping_interval_s
            )
        else:
            connect = ConnectSettings.from_env(
                url=str(url) if url else None,
                name="taskbus-executor",
                ping_interval_s=ping_interval_s,
            )
        values: dict[str, object] = {"connect": connect}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_cli(cls, argv: Sequence[str] | None = None) -> ExecutorSettings:
        cli = parser()
        args = cli.parse_args(argv)
        try:
            return cls._from_args(args)
        except ValueError as exc:  # a bad TASKBUS_* variable: a usage error, not a traceback
            cli.error(str(exc))

    @classmethod
    def _from_args(cls, args: argparse.Namespace) -> ExecutorSettings:
        return cls.from_env(
            args=args,
            slots=args.slots,
            pool=args.pool,
            work_dir=Path(args.work_dir).expanduser() if args.work_dir else None,
            env_dir=Path(args.env_dir).expanduser() if args.env_dir else None,
            env_cache_max_bytes=args.env_cache_max_bytes,
            ack_wait_s=args.ack_wait,
            kill_grace_s=args.kill_grace,
            shutdown_grace_s=args.shutdown_grace,
            max_log_bytes=args.max_log_bytes,
            zygote=False if args.no_zygote else None,
            package=False if args.no_packaging else None,
            keep_run_dirs=True if args.keep_run_dirs else None,
            run_uids=args.run_uids,
            cgroups=False if args.no_cgroups else None,
            max_run_pids=args.max_run_pids,
            run_signing_key=Path(args.run_signing_key) if args.run_signing_key else None,
            base_requirements=(
                Path(args.base_requirements).expanduser() if args.base_requirements else None
            ),
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _ack_wait(text: str) -> float:
    value = float(text)
    if not names.MIN_ACK_WAIT_S <= value <= names.MAX_ACK_WAIT_S:
        raise argparse.ArgumentTypeError(
            f"must be between {names.MIN_ACK_WAIT_S:g} and {names.MAX_ACK_WAIT_S:g} seconds, "
            f"not {value:g}"
        )
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="taskbus executor",
        description="Run task runs from the Taskbus run queue on this host.",
    )
    add_connection_options(p)
    p.add_argument("--slots", type=_positive_int, help="runs at once (default 4)")
    p.add_argument("--pool", help=f"the pool whose queue to take runs from ({names.DEFAULT_POOL})")
    p.add_argument("--work-dir", help="where zips, environments and run folders are kept")
    p.add_argument("--env-dir", help="virtualenv cache (default <work-dir>/envs)")
    p.add_argument("--env-cache-max-bytes", type=_positive_int, help="virtualenv cache cap")
    p.add_argument(
        "--ack-wait",
        type=_ack_wait,
        help=f"run queue ack wait, seconds ({names.MIN_ACK_WAIT_S:g} to {names.MAX_ACK_WAIT_S:g})",
    )
    p.add_argument("--kill-grace", type=_positive_float, help="SIGTERM to SIGKILL, seconds")
    p.add_argument("--shutdown-grace", type=_positive_float, help="runs may finish, seconds")
    p.add_argument("--max-log-bytes", type=_positive_int, help="log cap per run, bytes")
    p.add_argument("--no-zygote", action="store_true", help="spawn every run afresh")
    p.add_argument("--no-packaging", action="store_true", help="leave packaging to others")
    p.add_argument("--keep-run-dirs", action="store_true", help="keep run folders")
    p.add_argument(
        "--run-uids",
        help=f"UIDs for runs, FIRST-LAST, or none to run them as the executor's user "
        f"(default {names.DEFAULT_RUN_UIDS}; used when the executor is root or has CAP_SETUID)",
    )
    p.add_argument("--no-cgroups", action="store_true", help="no cgroup per run")
    p.add_argument(
        "--max-run-pids",
        type=_positive_int,
        help=f"processes and threads one run may have at once; a fork past it fails "
        f"(default {names.DEFAULT_MAX_RUN_PIDS})",
    )
    p.add_argument(
        "--run-signing-key",
        help=f"the run role's signing key (signing/run.nk of `taskbus auth init`; or "
        f"${names.ENV_RUN_SIGNING_KEY}): each run gets its own credential",
    )
    p.add_argument(
        "--base-requirements",
        metavar="FILE",
        help=f"requirements every task environment gets under the orchestration's own pins "
        f"(which win); an orchestration without requirements gets only these "
        f"(or ${names.ENV_BASE_REQUIREMENTS})",
    )
    return p
