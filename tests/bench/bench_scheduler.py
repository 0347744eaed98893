"""Scheduler benchmark: 10,000 active schedules on one machine, one scheduler process.

    python tests/bench/bench_scheduler.py [--tasks 10000] [--duration-s 65] [--scenario both]

Starts its own nats-server (temporary store) and a real `python -m broker.scheduler`
subprocess. Two scenarios, each with its own server:

* ``spread``: 60 % every-minute tasks, each at its own second of the minute
  (``* * * * * S``), 40 % seconds-level tasks every 10 s at their own offset
  (``* * * * * K/10``): about 500 fires a second, steadily.
* ``burst``: the same counts, but every-minute tasks in plain 5-field form (``* * * * *``: all
  of them at second 0) and seconds-level ones every 30 s at second 0 and 30 — so every
  instant is a burst of thousands of fires, with idle time in between.

Figures:
* fire lag: instant → the RunRequest arriving at a core subscriber on the run-queue subjects
  (instant read from its Nats-Msg-Id ``<task>@<instant>``), p50/p99/max;
* scheduler CPU while idle between fires (from /proc/<pid>/stat, in windows with no fire
  within 1.5 s before and 0.5 s after), and its overall CPU;
* scheduler RSS (VmRSS, peak over the run);
* time to load every schedule at start: a restart of the scheduler with all tasks (and the
  watermark) on the bus, from process spawn to its "scheduler ready" line (so keep the
  scheduler's log level at INFO when passing --scheduler-args).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from broker import catalog, names  # noqa: E402
from broker.connection import Bus, connect  # noqa: E402
from broker.server import EmbeddedServer, ServerSettings  # noqa: E402
from broker.settings import ConnectSettings  # noqa: E402
from broker.status import TaskKind  # noqa: E402
from tests.helpers import make_zip  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def schedules(scenario: str, count: int) -> list[str]:
    minute = int(count * 0.6)
    result = []
    for n in range(count):
        if scenario == "spread":
            result.append(f"* * * * * {n % 60}" if n < minute else f"* * * * * {n % 10}/10")
        else:
            result.append("* * * * *" if n < minute else "* * * * * */30")
    return result


@dataclass
class Sample:
    at: float  # wall clock
    cpu_ticks: int
    rss_kib: int


@dataclass
class Scheduler:
    process: subprocess.Popen[bytes]
    log_path: Path
    samples: list[Sample] = field(default_factory=list)

    @classmethod
    def start(cls, url: str, log_path: Path, extra: tuple[str, ...] = ()) -> Scheduler:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        process = subprocess.Popen(
            [sys.executable, "-m", "broker.scheduler", "--url", url, *extra],
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("wb"),
            env=env,
            cwd=REPO,
        )
        return cls(process, log_path)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, timeout_s: float = 120) -> float:
        """Seconds until the "scheduler ready" line; returns the load time it logged (ms)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.search(r"scheduler ready: .* loaded in (\d+) ms", self.output())
            if found:
                return float(found.group(1))
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scheduler did not get ready:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.01)

    def sample(self) -> Sample:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        rss = 0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return Sample(time.time(), ticks, rss)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def create_tasks(bus: Bus, plan: list[str]) -> float:
    orch = await catalog.upload_orchestration(
        bus, make_zip({"main.py": "print('tick')\n"}), name="bench", file_name="bench.zip"
    )
    gate = asyncio.Semaphore(64)
    started = time.perf_counter()

    async def one(n: int, schedule: str) -> None:
        async with gate:
            await catalog.create_task(
                bus, orch, name=f"bench-{n}", kind=TaskKind.SCHEDULED, schedule=schedule
            )

    await asyncio.gather(*(one(n, s) for n, s in enumerate(plan)))
    return time.perf_counter() - started


async def scenario(
    name: str, count: int, duration_s: float, workdir: Path, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    print(f"\n== {name}: {count} schedules, {duration_s:.0f} s of firing ==", flush=True)
    server = EmbeddedServer(ServerSettings(data_dir=workdir / name / "nats", port=0))
    with server:
        bus = await connect(ConnectSettings(urls=[server.url]))
        first = Scheduler.start(server.url, workdir / f"{name}-first.log")
        sched: Scheduler | None = None
        try:
            await first.ready()
            create_s = await create_tasks(bus, schedules(name, count))
            print(f"created {count} tasks in {create_s:.1f} s", flush=True)
            await asyncio.sleep(3)  # let it arm them and write the watermark, then restart
            first.stop()

            arrivals: list[tuple[float, str]] = []

            async def on_request(msg: object) -> None:
                headers = getattr(msg, "headers", None) or {}
                arrivals.append((time.time(), headers.get(names.MSG_ID, "")))

            await bus.nc.subscribe(names.RUNQ_SUBJECTS, cb=on_request)
            spawned = time.perf_counter()
            sched = Scheduler.start(server.url, workdir / f"{name}-second.log", extra)
            loaded_ms = await sched.ready()
            startup_s = time.perf_counter() - spawned
            await asyncio.sleep(2)  # catch-up of the restart gap is not part of the window
            window_start = time.time()
            arrivals.clear()
            while time.time() - window_start < duration_s:
                sched.samples.append(sched.sample())
                await asyncio.sleep(0.25)
            sched.samples.append(sched.sample())
            window_end = time.time()
            sched.stop()
            await bus.close()
        finally:
            first.stop()
            if sched is not None:
                sched.stop()
    assert sched is not None
    own = [float(m) for m in re.findall(r"lag_ms=([\d.]+)", sched.output())]
    lags = []
    instants: set[float] = set()
    for arrived, msg_id in arrivals:
        instant = datetime.fromisoformat(msg_id.partition("@")[2]).timestamp()
        if window_start <= instant <= window_end:
            lags.append((arrived - instant) * 1000)
            instants.add(instant)
    fire_times = sorted([a for a, _ in arrivals] + list(instants))
    idle_ticks = 0
    idle_s = 0.0
    for a, b in itertools.pairwise(sched.samples):
        lo = bisect.bisect_left(fire_times, a.at - 1.5)
        if lo == len(fire_times) or fire_times[lo] > b.at + 0.5:  # no fire near this window
            idle_ticks += b.cpu_ticks - a.cpu_ticks
            idle_s += b.at - a.at
    total_ticks = sched.samples[-1].cpu_ticks - sched.samples[0].cpu_ticks
    total_s = sched.samples[-1].at - sched.samples[0].at
    figures = {
        "fires": float(len(lags)),
        "fires_per_s": len(lags) / duration_s,
        "lag_p50_ms": statistics.median(lags) if lags else float("nan"),
        "lag_p99_ms": pct(lags, 0.99) if lags else float("nan"),
        "lag_max_ms": max(lags) if lags else float("nan"),
        "own_lag_p50_ms": statistics.median(own) if own else float("nan"),
        "own_lag_p99_ms": pct(own, 0.99) if own else float("nan"),
        "cpu_idle_pct": 100 * idle_ticks / TICKS / idle_s if idle_s else float("nan"),
        "idle_window_s": idle_s,
        "cpu_total_pct": 100 * total_ticks / TICKS / total_s,
        "rss_peak_mib": max(s.rss_kib for s in sched.samples) / 1024,
        "load_ms": loaded_ms,
        "spawn_to_ready_s": startup_s,
        "create_tasks_s": create_s,
    }
    for key, value in figures.items():
        print(f"  {key:>16}: {value:,.2f}")
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--duration-s", type=float, default=65.0)
    parser.add_argument("--scenario", choices=["spread", "burst", "both"], default="both")
    parser.add_argument(
        "--scheduler-args", default="", help="extra scheduler options, e.g. '--log-level WARNING'"
    )
    args = parser.parse_args()
    names_ = ["spread", "burst"] if args.scenario == "both" else [args.scenario]
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        for name in names_:
            extra = tuple(args.scheduler_args.split())
            await scenario(name, args.tasks, args.duration_s, Path(tmp), extra)


if __name__ == "__main__":
    asyncio.run(main())
