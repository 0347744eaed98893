"""Finished runs' records expire after the retention period; pending and running ones never.

The retention comes from ``TASKBUS_RUN_RETENTION_DAYS`` (here a couple of seconds) and is set
by whoever writes a run's final status: the executor, or the scheduler for a skipped fire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker import dispatch, names, store
from broker.connection import Bus
from broker.models import RunRecord, TaskRecord, utcnow
from broker.settings import ConnectSettings
from broker.status import RunStatus, TaskKind
from tests.helpers import Daemon, daemon_env, wait_for_executors
from tests.test_executor import run_once, start_executor, upload, wait_run

RETENTION_S = 2.0


async def wait_expired(bus: Bus, key: str, timeout_s: float = 15.0) -> None:
    """Wait for the record's expiry, as a live watcher (the console) sees it: the server's
    delete marker arrives as a deletion."""
    async with asyncio.timeout(timeout_s):
        async for changed, record in store.watch(bus.runs, RunRecord, key):
            if changed == key and record is None:
                break
    assert await store.get(bus.runs, key, RunRecord) is None


def task_record(task_id: str, orchestration_id: str, **fields: Any) -> TaskRecord:
    """A task as the bus would hold it, for runs written without creating the task."""
    now = utcnow()
    fields.setdefault("kind", TaskKind.RUN_ONCE)
    return TaskRecord(
        id=task_id, name=task_id, orchestration_id=orchestration_id, created_at=now,
        updated_at=now, **fields,
    )  # fmt: skip


def test_the_retention_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConnectSettings.from_env().run_retention_s == names.RUN_RETENTION_S
    monkeypatch.setenv(names.ENV_RUN_RETENTION_DAYS, "0.5")
    assert ConnectSettings.from_env().run_retention_s == 43200
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv(names.ENV_RUN_RETENTION_DAYS, bad)
        with pytest.raises(ValueError, match=r"TASKBUS_RUN_RETENTION_DAYS=.* is not a number"):
            ConnectSettings.from_env()


async def test_a_finished_run_expires_and_an_active_one_stays(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(names.ENV_RUN_RETENTION_DAYS, str(RETENTION_S / 86400))
    start_executor(start_daemon, nats_url, tmp_path / "executor")
    await wait_for_executors(bus, 1)
    orch = await upload(bus, {"main.py": "print('done')\n"})
    finished = await wait_run(bus, (await run_once(bus, orch)).id)
    assert finished.status is RunStatus.SUCCESS
    # A run waiting in a pool no executor serves stays pending: it must never expire.
    pending, _ = await dispatch.enqueue_run(bus, task_record("waiting", orch.id, pool="nobody"))

    await wait_expired(bus, finished.key)

    still = await store.get(bus.runs, pending.key, RunRecord)
    assert still is not None and still[0].status is RunStatus.PENDING


async def test_a_skipped_fire_record_expires_too(bus: Bus) -> None:
    bus.settings = dataclasses.replace(bus.settings, run_retention_s=RETENTION_S)
    now = utcnow().replace(microsecond=0)
    task = task_record("t", "o", kind=TaskKind.SCHEDULED, schedule="* * * * *")
    skipped = await dispatch.record_skipped_run(bus, task, now - timedelta(minutes=1), "missed")
    assert skipped is not None and skipped.status is RunStatus.SKIPPED

    await wait_expired(bus, skipped.key)


@pytest.mark.parametrize("module", ["executor", "broker.scheduler", "sdk.cli"])
def test_a_bad_retention_variable_is_a_usage_error_everywhere(module: str) -> None:
    env = {**daemon_env(), names.ENV_RUN_RETENTION_DAYS: "a month"}
    argv = ["tasks"] if module == "sdk.cli" else []
    done = subprocess.run(
        [sys.executable, "-m", module, *argv, "--url", "nats://127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "TASKBUS_RUN_RETENTION_DAYS='a month' is not a number of days" in done.stderr
    assert "Traceback" not in done.stderr
