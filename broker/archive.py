"""The orchestration zip format: what makes a zip valid, and extracting one safely.

A valid orchestration is a zip with a ``main.py`` (at the root, else the shallowest one, ties
broken by path order), at most one ``requirements.txt``, no absolute or ``..`` paths, no
symlinks, and a bounded uncompressed size. ``inspect`` checks the metadata only (~3 ms per
1000 entries); ``extract`` writes the files, checking CRCs on the way.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from broker import names
from broker.errors import InvalidOrchestration

ENTRYPOINT = "main.py"
REQUIREMENTS = "requirements.txt"


@dataclass(frozen=True)
class ArchiveInfo:
    sha: str  # sha256 of the zip bytes
    size: int
    entrypoint: str  # path of main.py inside the zip
    requirements: str  # text of requirements.txt, "" when there is none
    files: int
    uncompressed_bytes: int


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unsafe_reason(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return "climbs out of the archive with '..'"
    return None


def inspect(
    data: bytes,
    *,
    max_uncompressed_bytes: int = names.MAX_ZIP_UNCOMPRESSED_BYTES,
    max_entries: int = names.MAX_ZIP_ENTRIES,
) -> ArchiveInfo:
    """Validate an orchestration zip; raise ``InvalidOrchestration`` naming the problem."""
    if not data:
        raise InvalidOrchestration("The file is empty: an orchestration is a zip with a main.py.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidOrchestration(
            f"Not a zip file ({exc}). Create one with e.g. `cd my_task && zip -r ../my_task.zip .`"
        ) from None
    with archive:
        infos = archive.infolist()
        files = [info for info in infos if not info.is_dir()]
        if not files:
            raise InvalidOrchestration("The zip is empty: add a main.py at its root.")
        if len(infos) > max_entries:
            raise InvalidOrchestration(
                f"The zip has {len(infos)} entries; at most {max_entries} are allowed."
            )
        total = 0
        for info in infos:
            reason = _unsafe_reason(info.filename)
            if reason:
                raise InvalidOrchestration(
                    f"Unsafe path in zip: {info.filename!r} {reason}. Zip the folder's contents "
                    f"with relative paths."
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InvalidOrchestration(
                    f"The zip holds a symbolic link, {info.filename!r}; include the file itself "
                    f"(zip without -y)."
                )
            total += info.file_size
        if total > max_uncompressed_bytes:
            raise InvalidOrchestration(
                f"The zip is too large: {total} bytes uncompressed, the limit is "
                f"{max_uncompressed_bytes}. Keep big models or data outside the zip."
            )
        names_ = [info.filename for info in files]
        entrypoint = find_entrypoint(names_)
        requirements = sorted(n for n in names_ if PurePosixPath(n).name == REQUIREMENTS)
        if len(requirements) > 1:
            raise InvalidOrchestration(
                f"The zip has several requirements.txt files ({', '.join(requirements)}); keep "
                f"exactly one, next to main.py."
            )
        requirements_text = ""
        if requirements:
            try:
                requirements_text = archive.read(requirements[0]).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidOrchestration(
                    f"{requirements[0]} is not UTF-8 text; save it as UTF-8."
                ) from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise InvalidOrchestration(f"{requirements[0]} cannot be read: {exc}") from None
    return ArchiveInfo(
        sha=sha256(data),
        size=len(data),
        entrypoint=entrypoint,
        requirements=requirements_text,
        files=len(files),
        uncompressed_bytes=total,
    )


def find_entrypoint(paths: list[str]) -> str:
    """``main.py`` at the root, else the shallowest one (ties broken by path order)."""
    mains = [p for p in paths if PurePosixPath(p).name == ENTRYPOINT]
    if not mains:
        raise InvalidOrchestration(
            "The zip has no main.py. Put the code to run in a file named main.py at the zip's root."
        )
    return min(mains, key=lambda p: (len(PurePosixPath(p).parts), p))


def extract(data: bytes | Path, dest: Path) -> None:
    """Extract into ``dest`` (which must not exist yet); re-checks every path."""
    source = data if isinstance(data, Path) else io.BytesIO(data)
    dest.mkdir(parents=True)
    root = dest.resolve()
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            if _unsafe_reason(info.filename) or stat.S_ISLNK(info.external_attr >> 16):
                raise InvalidOrchestration(f"Unsafe entry in zip: {info.filename!r}")
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise InvalidOrchestration(f"Unsafe entry in zip: {info.filename!r}")
            archive.extract(info, root)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(target, mode | stat.S_IRUSR)
