"""The orchestration zip format: what makes a zip valid, and extracting one safely.

A valid orchestration is a zip with a ``main.py`` (at the root, else the shallowest one, ties
broken by path order), at most one ``requirements.txt`` of PEP 508 lines (broker.requirements),
no absolute or ``..`` paths, no names with control characters, no name twice, no links or
special files, no encrypted entries, no entry (nor the whole) unpacking to over
``MAX_ZIP_RATIO`` times its compressed size, and a bounded uncompressed size. ``inspect``
checks the metadata only (cheap: no entry is decompressed); ``extract`` runs the same checks, then
writes the files, checking CRCs on the way (zipfile never reads past an entry's declared size,
so the declared sizes checked here bound what is written).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from broker import names, requirements
from broker.errors import InvalidOrchestration

ENTRYPOINT = "main.py"
REQUIREMENTS = "requirements.txt"
ENCRYPTED = 0x1  # general purpose flag bit 0: the entry is encrypted
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


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


def _control_character(name: str) -> str | None:
    """The first NUL, C0 or C1 control character (or DEL) in ``name``, escaped."""
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return repr(char)
    return None


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one entry is refused (its name is shown escaped), or None."""
    # zipfile cuts a name at its first NUL; orig_filename is the name as stored.
    raw = info.orig_filename
    shown = repr(raw)
    char = _control_character(raw)
    if char:
        return f"The zip has an entry name with the control character {char}: {shown}. Rename it."
    reason = _unsafe_reason(raw)
    if reason:
        return (
            f"Unsafe path in zip: {shown} {reason}. Zip the folder's contents with relative paths."
        )
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return f"The zip holds a symbolic link, {shown}; include the file itself (zip without -y)."
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"The zip holds {shown}, which is not a regular file or folder; leave it out."
    if info.flag_bits & ENCRYPTED:
        return f"{shown} is encrypted in the zip; zip the folder without a password."
    if info.compress_type not in COMPRESSIONS:
        return (
            f"{shown} uses a compression method Python cannot read ({info.compress_type}); "
            f"zip it with deflate (the default of `zip` and of most tools)."
        )
    return None


def _bomb(info: zipfile.ZipInfo) -> str | None:
    """Why an entry is a compression-ratio bomb, or None (``names.MAX_ZIP_RATIO``)."""
    size, packed = info.file_size, max(info.compress_size, 1)
    if size > names.ZIP_RATIO_MIN_BYTES and size > names.MAX_ZIP_RATIO * packed:
        return (
            f"{info.orig_filename!r} unpacks to {info.file_size} bytes from "
            f"{info.compress_size} (over {names.MAX_ZIP_RATIO}:1): a zip bomb, not an "
            f"orchestration."
        )
    return None


@dataclass(frozen=True)
class _Contents:
    entrypoint: str
    requirements: str
    files: int
    uncompressed_bytes: int


def _check(archive: zipfile.ZipFile, *, max_uncompressed_bytes: int, max_entries: int) -> _Contents:
    """Every check of an orchestration zip, on its metadata (nothing is unpacked but
    requirements.txt, itself bounded): the SDK runs it before upload, the executor again
    before it extracts anything."""
    infos = archive.infolist()
    files = [info for info in infos if not info.is_dir()]
    if not files:
        raise InvalidOrchestration("The zip is empty: add a main.py at its root.")
    if len(infos) > max_entries:
        raise InvalidOrchestration(
            f"The zip has {len(infos)} entries; at most {max_entries} are allowed."
        )
    total = compressed = 0
    seen: set[str] = set()
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise InvalidOrchestration(problem)
        key = PurePosixPath(info.orig_filename.replace("\\", "/")).as_posix()
        if key in seen:
            raise InvalidOrchestration(
                f"The zip has {info.orig_filename!r} twice; which one would run is a guess. "
                f"Keep one."
            )
        seen.add(key)
        total += info.file_size
        compressed += info.compress_size
    if total > max_uncompressed_bytes:
        raise InvalidOrchestration(
            f"The zip is too large: {total} bytes uncompressed, the limit is "
            f"{max_uncompressed_bytes}. Keep big models or data outside the zip."
        )
    for info in infos:
        problem = _bomb(info)
        if problem:
            raise InvalidOrchestration(problem)
    if total > names.ZIP_RATIO_MIN_BYTES and total > names.MAX_ZIP_RATIO * max(compressed, 1):
        raise InvalidOrchestration(
            f"The zip unpacks to {total} bytes from {compressed} (over "
            f"{names.MAX_ZIP_RATIO}:1): a zip bomb, not an orchestration."
        )
    names_ = [info.filename for info in files]
    entrypoint = find_entrypoint(names_)
    found = sorted(
        (info for info in files if PurePosixPath(info.filename).name == REQUIREMENTS),
        key=lambda info: info.filename,
    )
    if len(found) > 1:
        raise InvalidOrchestration(
            f"The zip has several requirements.txt files "
            f"({', '.join(info.filename for info in found)}); keep exactly one, next to main.py."
        )
    text = _read_requirements(archive, found[0]) if found else ""
    if text:
        requirements.parse(text, source=found[0].filename)
    return _Contents(
        entrypoint=entrypoint, requirements=text, files=len(files), uncompressed_bytes=total
    )


def _read_requirements(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    if info.file_size > names.MAX_REQUIREMENTS_BYTES:
        raise InvalidOrchestration(
            f"{info.filename} is {info.file_size} bytes; at most "
            f"{names.MAX_REQUIREMENTS_BYTES} are allowed (list packages, not data)."
        )
    try:
        return archive.read(info).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidOrchestration(
            f"{info.filename} is not UTF-8 text; save it as UTF-8."
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise InvalidOrchestration(
            f"{info.filename} cannot be read ({exc}); zip the folder again."
        ) from None


def _open(source: bytes | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise InvalidOrchestration(
            f"Not a zip file ({exc}). Create one with e.g. `cd my_task && zip -r ../my_task.zip .`"
        ) from None


def inspect(
    data: bytes,
    *,
    max_uncompressed_bytes: int = names.MAX_ZIP_UNCOMPRESSED_BYTES,
    max_entries: int = names.MAX_ZIP_ENTRIES,
) -> ArchiveInfo:
    """Validate an orchestration zip; raise ``InvalidOrchestration`` naming the problem."""
    if not data:
        raise InvalidOrchestration("The file is empty: an orchestration is a zip with a main.py.")
    with _open(data) as archive:
        contents = _check(
            archive, max_uncompressed_bytes=max_uncompressed_bytes, max_entries=max_entries
        )
    return ArchiveInfo(
        sha=sha256(data),
        size=len(data),
        entrypoint=contents.entrypoint,
        requirements=contents.requirements,
        files=contents.files,
        uncompressed_bytes=contents.uncompressed_bytes,
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
    """Extract into ``dest`` (which must not exist yet), after every check ``inspect`` makes:
    a zip that skipped the SDK's check is refused here, before anything is written."""
    with _open(data) as archive:
        _check(
            archive,
            max_uncompressed_bytes=names.MAX_ZIP_UNCOMPRESSED_BYTES,
            max_entries=names.MAX_ZIP_ENTRIES,
        )
        dest.mkdir(parents=True)
        root = dest.resolve()
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
