"""The scheduler's settings: one typed object, built from the command line or the environment."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.options import add_connection_options
from broker.settings import ConnectSettings


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    connect: ConnectSettings = field(default_factory=ConnectSettings.from_env)
    # A fire picked up later than this after its instant is late: the task's missed policy
    # decides whether it still runs. Covers event-loop hiccups and a busy burst, not downtime.
    on_time_s: float = 2.0
    # Marks (the last handled instant per task) are written at most this often per task: they
    # only say where to resume after a restart, and run records are idempotent anyway.
    mark_flush_interval_s: float = 1.0
    # Fires in flight at once: a burst of thousands of every-minute tasks is pipelined, not
    # serialised one round trip at a time, and never floods the server.
    max_concurrent_fires: int = 512
    # After downtime, at most this many missed instants per task get a record each; older ones
    # are summarised in one record ("missed: every fire from A to B").
    missed_records_cap: int = 100
    # Overlap "replace": how long to wait for the replaced run to end before the new one
    # starts anyway (the executor's TERM → KILL grace is shorter).
    replace_wait_s: float = 30.0
    # Continuous tasks: back-off after consecutive failures, doubling from min to max; a run
    # that succeeded, or ran at least healthy_run_s, resets it.
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0
    healthy_run_s: float = 60.0
    # ... and successive runs start at least this far apart, so a task that exits at once
    # (success or not) is not restarted in a hot loop of tens of runs a second.
    min_interval_s: float = 1.0
    # SIGINT/SIGTERM: fires in flight get this long to finish before the process exits.
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_cli(cls, argv: Sequence[str] | None = None) -> SchedulerSettings:
        parser = argparse.ArgumentParser(
            prog="python -m broker.scheduler",
            description="The Taskbus cron scheduler: fires scheduled and continuous tasks.",
        )
        add_connection_options(parser)
        parser.add_argument("--on-time-s", type=float, default=cls.on_time_s)
        parser.add_argument("--max-concurrent-fires", type=int, default=cls.max_concurrent_fires)
        parser.add_argument("--missed-records-cap", type=int, default=cls.missed_records_cap)
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=cls.shutdown_grace_s,
            help="seconds fires in flight may take after SIGTERM (default %(default)s)",
        )
        parser.add_argument("--log-level", default=cls.log_level, help="DEBUG, INFO, WARNING")
        args = parser.parse_args(argv)
        level = args.log_level.upper()
        if not isinstance(logging.getLevelName(level), int):
            parser.error(f"unknown --log-level {args.log_level!r}: use DEBUG, INFO or WARNING")
        try:
            connect = ConnectSettings.from_args(args, name="taskbus-scheduler")
        except ValueError as exc:  # a bad TASKBUS_* variable: a usage error, not a traceback
            parser.error(str(exc))
        return cls(
            connect=connect,
            on_time_s=args.on_time_s,
            max_concurrent_fires=max(1, args.max_concurrent_fires),
            missed_records_cap=max(1, args.missed_records_cap),
            shutdown_grace_s=max(0.0, args.shutdown_grace),
            log_level=level,
        )
