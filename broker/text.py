"""User-controlled text made safe for a terminal: no name or log line can drive the terminal.

Task, orchestration and connection names, errors, reasons, arguments and log lines come from
users; printed raw, an escape sequence in them could set the terminal's title, write its
clipboard (OSC 52), clear the screen, or hide text behind a carriage return. ``printable``
shows every such character as a Python-style escape (``\\x1b``, ``\\x07``, ``\\x9b``, ``\\r``,
``\\u2028``), never raw. It is for display only: the SDK's data (``run.logs()`` items,
``task.name()``) stay as written, and ``--json`` output is exact (JSON escapes them itself).

What is escaped: C0 controls (U+0000-U+001F, ESC among them), DEL, C1 controls
(U+0080-U+009F: U+009B is a one-character CSI to some terminals), the Unicode line and
paragraph separators (line breaks to Python and some terminals) and the bidirectional
overrides and isolates (they reorder what a person reads). Backslashes are not doubled: the
result is for eyes, not a reversible encoding; ``--json`` is the exact form.

Tabs: escaped by default (a name or an error is one cell of a table); log lines keep them
(``keep="\\t"``) because a tab only moves the cursor forward — it can neither erase nor
overwrite — and ``taskbus logs | cut -f2`` must keep working. The console expands a log
line's tabs to spaces itself.

``printable_ansi`` is for a renderer that turns SGR colour sequences (``ESC [ ... m``) into
styles, as the console does: those sequences are kept for it, everything else is escaped.
"""

from __future__ import annotations

import re
from functools import lru_cache

LOG_KEEP = "\t"  # what a log line keeps in a terminal: tabs (see above)
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
CONTROL = re.compile(f"[{_CONTROLS}]")  # one character ``printable`` escapes
# SGR: colours and text attributes only, with the parameter bytes a colour can hold.
SGR = re.compile(r"\x1b\[[0-9;:]*m")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


@lru_cache(maxsize=8)
def _pattern(keep: str) -> re.Pattern[str]:
    if any(ord(c) >= 0x100 for c in keep):
        raise ValueError(f"keep holds C0 characters only, not {keep!r}")
    kept = "".join(rf"\x{ord(c):02x}" for c in keep)
    return re.compile(f"[{_CONTROLS}]" if not kept else f"(?![{kept}])[{_CONTROLS}]")


def printable(text: str, *, keep: str = "") -> str:
    """``text`` with every control character escaped (``"\\x1b[2J"`` → ``"\\\\x1b[2J"``),
    except those in ``keep`` (``"\\t"`` for log lines)."""
    pattern = _pattern(keep)
    if text.isprintable() and not keep:
        return text  # the common case, in C: no control, separator or format character
    return pattern.sub(_escape, text)


def printable_ansi(text: str, *, keep: str = "") -> str:
    """``printable``, but SGR colour sequences stay for a renderer that styles them."""
    if "\x1b" not in text:
        return printable(text, keep=keep)
    out: list[str] = []
    position = 0
    for match in SGR.finditer(text):
        out.append(printable(text[position : match.start()], keep=keep))
        out.append(match.group())
        position = match.end()
    out.append(printable(text[position:], keep=keep))
    return "".join(out)


def is_printable(text: str) -> bool:
    """True when ``printable`` would leave ``text`` as it is."""
    return CONTROL.search(text) is None
