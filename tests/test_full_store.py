"""A server whose store is too small, or fills up (issue 10, item 4): said plainly."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.connection import connect
from broker.errors import ServerError
from broker.server import EmbeddedServer, ServerSettings
from broker.settings import ConnectSettings


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_store_too_small_to_provision_says_how_much_space_it_needs(
    small_disk: Path,
) -> None:
    server = EmbeddedServer(ServerSettings(data_dir=small_disk / "data", port=0)).start()
    try:
        with pytest.raises(ServerError) as raised:
            bus = await connect(ConnectSettings.from_env(url=server.url))  # the admin provisions
            await bus.close()
    finally:
        server.stop()

    said = str(raised.value)
    assert "store is too small" in said
    assert "reserves 1 GiB" in said
    assert "insufficient storage resources available" in said  # nats-server's own words
    assert "at least 1.25 GiB of free space" in said
