"""Run latency and throughput, on a private nats-server and real executor subprocesses.

    python tests/bench/bench_runs.py [--runs 100] [--burst 300] [--no-zygote] [--secure]

With --secure the server requires credentials (operator mode, as `taskbus up` runs it), the
executor holds only the executor credential and the run signing key, every run gets its own
credential, and — as root — its own UID, cgroup and mount namespace: the cost of the trust
boundary, next to the plain figures of a run without it.

Prints p50/p99 of:
  (a) catalog.create_task(run once) returning → the first statement of main.py executing
      (main.py prints time.time() first thing; the value is read back from its log);
  (b) print() in a task → the line reaching a broker.logs.follow reader;
  (c) the extra start latency of a run whose environment is cached (requirements.txt) over a
      run with no requirements;
  (d) sustained trivial runs per second with one executor and 4 slots (a backlog of runs
      queued first, rate from the first start to the last finish in the run records).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nats.js.kv import KeyValue  # noqa: E402

from broker import catalog, dispatch, logs, names, store  # noqa: E402
from broker.authority import Authority  # noqa: E402
from broker.connection import Bus, connect  # noqa: E402
from broker.models import OrchestrationRecord, Record, RunRecord, TaskRecord  # noqa: E402
from broker.server import EmbeddedServer, ServerSettings  # noqa: E402
from broker.settings import ConnectSettings  # noqa: E402
from broker.status import ORCHESTRATION_SETTLED, RUN_TERMINAL, RunStatus, TaskKind  # noqa: E402
from executor.uids import can_switch_uids  # noqa: E402
from tests.helpers import Daemon, make_zip, wait_for_executors  # noqa: E402

R = TypeVar("R", bound=Record)
FIRST_STATEMENT = "import time; print(repr(time.time()))\n"
PRINTER = (
    "import time\ntime.sleep(0.3)\n"
    "for _ in range(10):\n    print(repr(time.time()))\n    time.sleep(0.02)\n"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def describe(name: str, values_ms: list[float]) -> str:
    return (
        f"{name}: p50 {pct(values_ms, 50):.1f} ms, p99 {pct(values_ms, 99):.1f} ms "
        f"(min {min(values_ms):.1f}, mean {statistics.fmean(values_ms):.1f}, n={len(values_ms)})"
    )


async def first_record(
    kv: KeyValue, kind: type[R], keys: str, wanted: Callable[[R], bool], timeout_s: float
) -> R:
    """The first record under ``keys`` for which ``wanted`` holds (watch closed after)."""
    async with asyncio.timeout(timeout_s), aclosing(store.watch(kv, kind, keys)) as changes:
        async for _, record in changes:
            if record is not None and wanted(record):
                return record
    raise AssertionError("unreachable")


async def upload(bus: Bus, files: dict[str, str]) -> OrchestrationRecord:
    record = await catalog.upload_orchestration(
        bus, make_zip(files), name="bench", file_name="bench.zip"
    )
    settled = await first_record(
        bus.orchestrations, OrchestrationRecord, record.key,
        lambda r: r.status in ORCHESTRATION_SETTLED, 120,
    )  # fmt: skip
    assert settled.status == "ready", settled.error
    return settled


async def finished(bus: Bus, task: TaskRecord) -> RunRecord:
    run = await first_record(
        bus.runs, RunRecord, f"{task.key}.*", lambda r: r.status in RUN_TERMINAL, 60
    )
    assert run.status == RunStatus.SUCCESS, run
    return run


async def start_latency(bus: Bus, orch: OrchestrationRecord, runs: int) -> list[float]:
    """(a)/(c): create_task returning → main.py's first statement, in ms."""
    samples = []
    for i in range(runs):
        task = await catalog.create_task(bus, orch, name=f"a{i}", kind=TaskKind.RUN_ONCE)
        returned = time.time()
        run = await finished(bus, task)
        lines = await logs.read(bus, run)
        stdout = [line.text for line in lines if line.stream == "stdout"]
        samples.append((float(stdout[0]) - returned) * 1000)
    return samples


async def log_latency(bus: Bus, orch: OrchestrationRecord, runs: int) -> list[float]:
    """(b): print() → a follower receives the line, in ms."""
    samples = []
    for i in range(runs):
        task = await catalog.create_task(bus, orch, name=f"b{i}", kind=TaskKind.RUN_ONCE)
        run = await first_record(bus.runs, RunRecord, f"{task.key}.*", lambda r: True, 30)
        async for line in logs.follow(bus, run):
            if line.stream == "stdout":
                samples.append((time.time() - float(line.text)) * 1000)
    return samples


async def throughput(
    bus: Bus, url: str, orch: OrchestrationRecord, work: Path, n: int, extra: list[str]
) -> float:
    """(d): queue ``n`` runs, then start one 4-slot executor; runs/s first start → last end."""
    tasks = []
    for i in range(n):
        task = await catalog.create_task(bus, orch, name=f"d{i}", kind=TaskKind.SCHEDULED,
                                         schedule="0 0 1 1 *")  # fmt: skip
        tasks.append(task)
    await asyncio.gather(*(dispatch.enqueue_run(bus, task) for task in tasks))
    daemon = Daemon(["-m", "executor", "--url", url, "--slots", "4", "--work-dir", str(work),
                     *extra],
                    work.with_suffix(".log"))  # fmt: skip
    try:
        wanted = {task.id for task in tasks}
        done: dict[str, RunRecord] = {}

        def all_done(run: RunRecord) -> bool:
            if run.task_id in wanted and run.status in RUN_TERMINAL:
                assert run.status == RunStatus.SUCCESS, run
                done[run.task_id] = run
            return len(done) == n

        await first_record(bus.runs, RunRecord, ">", all_done, 300)
    finally:
        daemon.stop()
    first = min(run.started_at for run in done.values() if run.started_at)
    last = max(run.finished_at for run in done.values() if run.finished_at)
    return n / (last - first).total_seconds()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--no-zygote", action="store_true")
    parser.add_argument("--no-cgroups", action="store_true", help="executor without cgroups")
    parser.add_argument("--secure", action="store_true", help="credentials and isolation on")
    options = parser.parse_args()
    extra = ["--no-zygote"] if options.no_zygote else []
    extra += ["--no-cgroups"] if options.no_cgroups else []
    with tempfile.TemporaryDirectory(prefix="taskbus-bench-") as folder:
        root = Path(folder)
        config, creds = None, None
        if options.secure:
            authority = Authority(root / "auth").ensure_local()
            config, creds = authority.server_config, str(authority.creds_path("admin"))
            os.environ[names.ENV_CREDS] = str(authority.creds_path("executor"))
            os.environ[names.ENV_RUN_SIGNING_KEY] = str(authority.run_signing_key)
            if can_switch_uids():
                os.environ[names.ENV_RUN_UIDS] = names.DEFAULT_RUN_UIDS
        settings = ServerSettings(data_dir=root / "nats", port=0, config_file=config)
        with EmbeddedServer(settings) as server:
            bus = await connect(ConnectSettings(urls=[server.url], creds_file=creds))
            executor = Daemon(
                ["-m", "executor", "--url", server.url, "--slots", "4",
                 "--work-dir", str(root / "ex"), *extra],
                root / "executor.log",
            )  # fmt: skip
            try:
                await wait_for_executors(bus, 1)
                plain = await upload(bus, {"main.py": FIRST_STATEMENT})
                cached = await upload(
                    bus, {"main.py": FIRST_STATEMENT, "requirements.txt": "six==1.16.0\n"}
                )
                printer = await upload(bus, {"main.py": PRINTER})
                await start_latency(bus, plain, 5)  # warm-up: zips extracted, zygotes warm
                await start_latency(bus, cached, 5)
                a = await start_latency(bus, plain, options.runs)
                c = await start_latency(bus, cached, options.runs)
                b = await log_latency(bus, printer, max(1, options.runs // 10))
            finally:
                executor.stop()
            rate = await throughput(bus, server.url, plain, root / "burst", options.burst, extra)
            await bus.close()
    launcher = "spawn" if options.no_zygote else "zygote"
    trust = "secure (own credential per run" if options.secure else "plain (no authentication"
    if options.secure:
        trust += ", own UID" if can_switch_uids() else ", shared UID"
    cgroups = "no cgroups" if options.no_cgroups else "a cgroup per run where the host allows"
    print(f"launcher: {launcher}; {trust}); {cgroups}; machine: {os.cpu_count()} cores")
    print(describe("(a) create_task → main.py first statement", a))
    print(describe("(b) print() → logs.follow reader", b))
    print(describe("    cached-env run, create_task → first statement", c))
    print(f"(c) cached env extra start latency: p50 {pct(c, 50) - pct(a, 50):+.1f} ms")
    print(f"(d) sustained trivial runs, 1 executor, 4 slots: {rate:.0f} runs/s "
          f"({options.burst} queued)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
