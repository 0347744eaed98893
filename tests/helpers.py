"""Helpers shared by the test suites: zips made in memory, daemons as real subprocesses."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

from broker import store
from broker.connection import Bus
from broker.models import ExecutorRecord
from broker.server import EmbeddedServer, ServerSettings, free_port

REPO = Path(__file__).resolve().parent.parent


def make_zip(files: Mapping[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def make_wheel(folder: Path, name: str, init: str, version: str = "0.0.1") -> Path:
    """A minimal pure-Python wheel of package ``name`` whose ``__init__.py`` is ``init``
    (installable offline by uv, from a local index)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": init,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: taskbus-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Tasks of most tests write into the test's own (0700) folders: their runs share the
    # executor's UID; tests of isolated runs pass --run-uids.
    env.setdefault("TASKBUS_RUN_UIDS", "none")
    return env


class Daemon:
    """A Taskbus daemon (`python -m executor ...`) as a real subprocess."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=daemon_env(),
            cwd=REPO,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the daemon and its whole process group (an executor host dying)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def wait_for_executors(bus: Bus, count: int, timeout_s: float = 30.0) -> list[str]:
    """Wait until ``count`` executors have a live heartbeat; returns their ids."""
    async with asyncio.timeout(timeout_s):
        seen: set[str] = set()
        async for key, record in store.watch(bus.executors, ExecutorRecord):
            if record is not None and key:
                seen.add(key)
            if len(seen) >= count:
                return sorted(seen)
    raise AssertionError("unreachable")


def start_cluster(
    data_dir: Path, size: int = 3, config_file: Path | None = None
) -> list[EmbeddedServer]:
    """A real JetStream cluster of ``size`` nats-servers on loopback (routes between all);
    ``config_file`` is every node's shared configuration (compose.yaml's deploy/nats.conf)."""
    client_ports = [free_port() for _ in range(size)]
    route_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    servers = []
    for index in range(size):
        cluster_args = (
            "--server_name", f"n{index}",
            "--cluster_name", "taskbus",
            "--cluster", f"nats://127.0.0.1:{route_ports[index]}",
            "--routes", routes,
            "--http_port", str(free_port()),
        )  # fmt: skip
        settings = ServerSettings(
            data_dir=data_dir / f"n{index}",
            port=client_ports[index],
            extra_args=cluster_args,
            config_file=config_file,
        )
        servers.append(EmbeddedServer(settings).start())
    return servers
