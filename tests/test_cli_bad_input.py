"""CLI input that used to slip through or get a raw error (issue 10): real ``taskbus``
subprocesses against a real server."""

from __future__ import annotations

import json

import sdk
from broker.connection import Bus
from tests.test_cli import one_error_line, taskbus
from tests.test_executor import upload

NEVER_RUNS = "print('hi')\n"


async def scheduled_task(bus: Bus, nats_url: str, name: str) -> str:
    orch = await upload(bus, {"main.py": NEVER_RUNS}, settled=False)
    async with sdk.AsyncClient(nats_url) as client:
        o = await client.get_orchestration(orch.id)
        task = await o.run_scheduled(name, "0 0 1 1 *")  # next fires on new year's day
        return task.id()


async def test_tasks_shows_a_status_column_so_a_paused_task_does_not_look_active(
    bus: Bus, nats_url: str
) -> None:
    task_id = await scheduled_task(bus, nats_url, "nightly")
    assert taskbus("pause", task_id, url=nats_url).returncode == 0

    result = taskbus("tasks", url=nats_url)

    assert result.returncode == 0, result.stderr
    header, _rule, row = result.stdout.splitlines()[:3]
    assert header.split()[:3] == ["id", "name", "status"]
    assert row.split()[:3] == [task_id, "nightly", "paused"]


async def test_pause_or_resume_of_a_killed_task_says_so_and_exits_2(
    bus: Bus, nats_url: str
) -> None:
    task_id = await scheduled_task(bus, nats_url, "gone")
    assert taskbus("kill", task_id, url=nats_url).returncode == 0

    for command, verb in (("pause", "paused"), ("resume", "resumed")):
        result = taskbus(command, task_id, url=nats_url)
        assert result.returncode == 2
        assert f"was killed: a killed task cannot be {verb}" in one_error_line(result)
        assert result.stdout == ""


async def test_logs_of_a_task_with_no_runs_says_no_runs_yet_and_exits_0(
    bus: Bus, nats_url: str
) -> None:
    task_id = await scheduled_task(bus, nats_url, "later")

    result = taskbus("logs", task_id, url=nats_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"task {task_id} (later) has no runs yet"
    as_json = taskbus("logs", task_id, "--json", url=nats_url)
    assert (as_json.returncode, as_json.stdout.strip()) == (0, "[]")
    unknown = taskbus("logs", task_id, "00000000-0000-0000-0000-000000000000", url=nats_url)
    assert unknown.returncode == 2 and "has no run 00000000" in one_error_line(unknown)


def test_an_http_url_is_refused_with_what_to_write() -> None:
    for url in ("http://127.0.0.1:8222", "https://nats.example.com", "nats://a:1,http://b:2"):
        result = taskbus("tasks", url=url)
        assert result.returncode == 2, result.stderr
        line = one_error_line(result)
        scheme = "https" if "https" in url else "http"
        assert f"{scheme}:// is not a NATS URL: use nats://" in line
        assert "Name or service not known" not in line
    result = taskbus("tasks", url="http://127.0.0.1:8222")
    assert "use nats://127.0.0.1:4222" in one_error_line(result)


async def test_run_and_schedule_take_retries_pool_and_limits(bus: Bus, nats_url: str) -> None:
    orch = await upload(bus, {"main.py": NEVER_RUNS}, settled=False)
    options = ["--retries", "2", "--retry-delay", "3", "--pool", "nowhere", "--memory", "64MiB",
               "--cpus", "0.5", "--json"]  # fmt: skip
    ran = taskbus("run", orch.id, "--name", "r", *options, url=nats_url)
    scheduled = taskbus("schedule", orch.id, "--name", "s", "--cron", "0 0 1 1 *", *options,
                        url=nats_url)  # fmt: skip
    for result in (ran, scheduled):
        assert result.returncode == 0, result.stderr
        task = json.loads(result.stdout)
        assert (task["retries"], task["retry_delay_s"], task["pool"]) == (2, 3.0, "nowhere")
        assert (task["memory_limit_bytes"], task["cpu_limit"]) == (64 << 20, 0.5)
    bad = taskbus("run", orch.id, "--name", "b", "--memory", "lots", url=nats_url)
    assert bad.returncode == 2 and "memory_limit 'lots' is not a size" in one_error_line(bad)
    bad = taskbus("run", orch.id, "--name", "b", "--pool", "a.b", url=nats_url)
    assert bad.returncode == 2 and "pool must be a name" in one_error_line(bad)
