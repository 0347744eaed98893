"""The examples under examples/ run end to end on a real server and a real executor, exactly
as README tells a user to run them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

import sdk
from tests.helpers import REPO, Daemon

EXAMPLES = REPO / "examples"


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("example", "args", "status", "expected"),
    [
        (
            "hello",
            {"workspace_name": "ws", "pipeline_name": "p"},
            "success",
            ["in_task=True", "workspace=ws pipeline=p"],
        ),
        ("with_requirements", {}, "success", ["alpha", "tabulate 0.9.0"]),
        ("data_file", {}, "success", ["rows=4 total=16.0 mean=4.00"]),
        ("failing", {}, "failed", ["loading the model", "Traceback", "FileNotFoundError"]),
    ],
)
async def test_example_runs(
    example: str,
    args: dict[str, str],
    status: str,
    expected: list[str],
    nats_url: str,
    executor: Daemon,
) -> None:
    async with sdk.AsyncClient(url=nats_url) as wl:
        orch = await wl.upload_orchestration(
            bytes_buffer=zip_folder(EXAMPLES / example), name=example
        )
        await orch.wait_until_ready(timeout=300)
        task = await orch.run_once(name=example, json_args=args, timeout=120)
        assert await task.wait(timeout=120) == status
        (run,) = await task.last_runs()
        text = "\n".join(await run.logs())
        for fragment in expected:
            assert fragment in text, text
