"""requirements.txt as Taskbus accepts it: PEP 508 requirement lines, optionally ``--hash`` pins.

The index a package comes from is the executor operator's setting, never the uploader's, and a
requirement may not point at the packaging host's files. So every option line (``-r``, ``-c``,
``-e``, ``--index-url``, ``--find-links``, …), local path, ``file:`` URL and direct reference
(``name @ url``) is refused with its 1-based line number and the reason. Direct references over
http(s) are refused too: they would fetch code from wherever the uploader chose, bypassing the
operator's index (and, on a private network, reach hosts the uploader cannot). The only
per-line option is ``--hash=<algorithm>:<hex>`` after a requirement; when any line has one, all
must (pip's hash-checking mode is all or nothing) and each must pin one version with ``==``.

The SDK calls ``parse`` at upload for fast feedback; the executor calls it again before
``uv`` ever sees the text (packaging and environment builds), so a client that skips the SDK
gains nothing. ``uv`` is then given ``render()``'s text, rebuilt from the parsed lines, never
the uploaded bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from broker.errors import InvalidOrchestration

SOURCE = "requirements.txt"
# hashlib names pip and uv accept, with their hex digest lengths.
HASH_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".egg")
_COMMENT = re.compile(r"(^|\s)#.*$")
_HASH = re.compile(r"--hash=(\w+):([0-9a-fA-F]+)$")
SHOWN_MAX_CHARS = 80
INDEX_HINT = "the package index is the executor operator's setting"


@dataclass(frozen=True)
class Line:
    """One requirement: where it was, what it asks for, and its hash pins."""

    number: int  # 1-based, of its first physical line
    requirement: Requirement
    hashes: tuple[str, ...] = ()  # "<algorithm>:<hex>", lowercase

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    def render(self, *, with_hashes: bool = True) -> str:
        text = str(self.requirement)
        if with_hashes and self.hashes:
            text += "".join(f" \\\n    --hash={h}" for h in self.hashes)
        return text


def _shown(text: str) -> str:
    text = text.strip()
    if len(text) > SHOWN_MAX_CHARS:
        text = text[: SHOWN_MAX_CHARS - 1] + "…"
    return repr(text)


def refuse(number: int, text: str, why: str, source: str = SOURCE) -> InvalidOrchestration:
    return InvalidOrchestration(f"{source} line {number}: {_shown(text)} {why}")


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of every non-empty line once comments are dropped and
    backslash continuations joined (as pip reads the file)."""
    found: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(part.strip() for part in pending).strip()
        pending = []
        if joined:
            found.append((start, joined))
    joined = " ".join(part.strip() for part in pending).strip()
    if joined:  # a continuation on the last line
        found.append((start, joined))
    return found


def _split_options(line: str) -> tuple[str, list[str]]:
    """The requirement part and the option tokens after it: options start at the first
    whitespace followed by ``-`` outside quotes (markers may quote anything)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char.isspace() and line[index + 1 : index + 2] == "-":
            return line[:index].rstrip(), line[index:].split()
    return line, []


def _option_name(token: str) -> str:
    return token.split("=", 1)[0]


def _hash(number: int, line: str, token: str, source: str) -> str:
    match = _HASH.match(token)
    if match is None:
        if _option_name(token) == "--hash":
            raise refuse(
                number, line, f"has a malformed hash {token!r}: write --hash=sha256:<hex>.", source
            )
        raise refuse(
            number,
            line,
            f"has the option {_option_name(token)!r}: only --hash=sha256:<hex> may follow a "
            f"requirement ({INDEX_HINT}).",
            source,
        )
    algorithm, digest = match.group(1).lower(), match.group(2).lower()
    if HASH_LENGTHS.get(algorithm) != len(digest):
        raise refuse(
            number,
            line,
            f"has a malformed hash {token!r}: use sha256, sha384 or sha512 with the full hex "
            f"digest.",
            source,
        )
    return f"{algorithm}:{digest}"


def _requirement(number: int, line: str, text: str, source: str) -> Requirement:
    lowered = text.lower()
    if "${" in text:
        raise refuse(number, line, "uses an environment variable: write the value itself.", source)
    if "file:" in lowered:
        raise refuse(
            number,
            line,
            "is a file: URL: files of the packaging host are not packages; list the package "
            "by name (and version).",
            source,
        )
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        if text.startswith((".", "/", "~", "\\")) or "/" in text or "\\" in text:
            what = "a URL" if "://" in text else "a local path"
            raise refuse(
                number,
                line,
                f"is {what}, not a requirement: list the package by name (and version); "
                f"{INDEX_HINT}.",
                source,
            ) from None
        reason = str(exc).splitlines()[0] if str(exc) else "cannot be parsed"
        raise refuse(
            number,
            line,
            f"is not a PEP 508 requirement ({reason}); write e.g. 'requests==2.32.3'.",
            source,
        ) from None
    if requirement.url:
        raise refuse(
            number,
            line,
            f"is a direct reference ({requirement.name} @ <url>): packages come only from the "
            f"index, {INDEX_HINT}; write '{requirement.name}==<version>' instead.",
            source,
        )
    if requirement.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise refuse(
            number,
            line,
            f"looks like a local archive file, not a package name; {INDEX_HINT}.",
            source,
        )
    return requirement


def _pinned(requirement: Requirement) -> bool:
    specs = list(requirement.specifier)
    return len(specs) == 1 and (
        specs[0].operator == "===" or (specs[0].operator == "==" and "*" not in specs[0].version)
    )


def parse(text: str, *, source: str = SOURCE) -> list[Line]:
    """The requirements of ``text``; ``InvalidOrchestration`` naming the first refused line."""
    lines: list[Line] = []
    for number, line in logical_lines(text):
        if line.startswith("-"):
            option = _option_name(line.split()[0])
            if option == "--hash":
                raise refuse(number, line, "has a --hash without a requirement before it.", source)
            raise refuse(
                number,
                line,
                f"is the option {option!r}: {source} may hold package requirements only "
                f"(no -r, -c, -e, index or find-links options; {INDEX_HINT}).",
                source,
            )
        requirement_text, tokens = _split_options(line)
        requirement = _requirement(number, line, requirement_text, source)
        hashes = tuple(_hash(number, line, token, source) for token in tokens)
        lines.append(Line(number=number, requirement=requirement, hashes=hashes))
    hashed = [entry for entry in lines if entry.hashes]
    if hashed:
        first = hashed[0]
        for entry in lines:
            if not entry.hashes:
                raise InvalidOrchestration(
                    f"{source} line {entry.number}: {entry.requirement.name!r} has no --hash, but "
                    f"line {first.number} pins one: with hashes, every requirement needs its "
                    f"own (hash-checking is all or nothing)."
                )
            if not _pinned(entry.requirement):
                raise InvalidOrchestration(
                    f"{source} line {entry.number}: {entry.requirement.name!r} has --hash pins, "
                    f"so it must pin one version with == (e.g. "
                    f"'{entry.requirement.name}==1.2.3')."
                )
    return lines


def hashed(lines: list[Line]) -> bool:
    """Whether installing these must run in hash-checking mode."""
    return any(line.hashes for line in lines)


def render(lines: list[Line], *, with_hashes: bool = True) -> str:
    """The text ``uv`` is given: rebuilt from the parsed lines, one requirement each."""
    return "".join(line.render(with_hashes=with_hashes) + "\n" for line in lines)
