"""The SDK tour from README: zip an example, upload it, run it once, read its logs.

Run `taskbus up` in another terminal first (or set TASKBUS_URL), then:
    python examples/quickstart.py
"""

import io
import zipfile
from pathlib import Path

import sdk


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder))
    return buffer.getvalue()


def main() -> None:
    with sdk.Client() as wl:
        data = zip_folder(Path(__file__).parent / "hello")
        orch = wl.upload_orchestration(bytes_buffer=data, name="hello", file_name="hello.zip")
        orch.wait_until_ready()
        task = orch.run_once(
            name="hello", json_args={"workspace_name": "ws", "pipeline_name": "p"}, timeout=60
        )
        print("final status:", task.wait())
        for line in task.last_runs()[0].logs():
            print(line)


if __name__ == "__main__":
    main()
