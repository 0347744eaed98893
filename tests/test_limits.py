"""Resource limits (``memory_limit=``, ``cpu_limit=``): a run that allocates past its memory
limit ends ``failure`` with reason ``out of memory (limit …)`` — never ``success``, never a bare
exit code — with cgroups and with the rlimit fallback (``--no-cgroups``). Real executors (runs
under the executor's UID, cgroups on as root), a real server, the SDK as users call it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from broker.connection import Bus
from broker.errors import TaskbusError
from broker.status import RunStatus, TaskStatus
from tests.helpers import Daemon, wait_for_executors
from tests.test_executor import start_executor, upload

GREEDY = """
print("allocating", flush=True)
hog = []
for _ in range(64):
    hog.append(bytearray(8 << 20))  # touched: zero-filled pages are written
print("allocated 512 MiB without being stopped", flush=True)
"""


@pytest.mark.parametrize(
    "cgroups",
    [True, False],
    ids=["cgroups", "rlimit"],
)
async def test_a_run_over_its_memory_limit_fails_out_of_memory(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    cgroups: bool,
) -> None:
    extra = () if cgroups else ("--no-cgroups",)
    start_executor(start_daemon, nats_url, tmp_path / "ex", *extra)
    await wait_for_executors(bus, 1)
    orch = await upload(bus, {"main.py": GREEDY})
    async with sdk.AsyncClient(nats_url) as client:
        o = await client.get_orchestration(orch.id)
        task = await o.run_once("greedy", memory_limit="64MiB")
        assert await task.wait(timeout=60) is TaskStatus.FAILED
        [run] = await task.last_runs()
        lines = "\n".join(await run.logs())
        assert await run.status() is RunStatus.FAILURE

    assert run.reason() == "out of memory (limit 64 MiB)", lines
    assert "allocated 512 MiB" not in lines
    assert "out of memory (limit 64 MiB)" in lines


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({"memory_limit": "lots"}, "memory_limit 'lots' is not a size"),
        ({"memory_limit": "1MiB"}, "is below"),
        ({"cpu_limit": "fast"}, "cpu_limit wants a number"),
        ({"cpu_limit": 0}, "cpu_limit wants a number of CPUs of at least 0.01"),
        ({"retries": -1}, "retries must be a whole number"),
        ({"retry_delay_s": "soon"}, "retry_delay_s must be a number"),
    ],
)
async def test_bad_limits_and_retries_are_clear_value_errors(
    bus: Bus, nats_url: str, options: dict[str, object], what: str
) -> None:
    orch = await upload(bus, {"main.py": "print(1)\n"}, settled=False)
    async with sdk.AsyncClient(nats_url) as client:
        o = await client.get_orchestration(orch.id)
        with pytest.raises(TaskbusError, match=what) as caught:
            await o.run_once("bad", **options)  # type: ignore[arg-type]
        assert isinstance(caught.value, ValueError)
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            await o.run_once("typo", retires=2)  # type: ignore[call-arg]
        assert len(await client.list_tasks()) == 0
