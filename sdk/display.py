"""How SDK objects look: plain-text tables for terminals, escaped HTML tables for Jupyter.

Every object describes itself as an ordered ``{label: text}`` mapping (``_display()``); a
single object renders it as a two-column table, a list renders one row per object with the
list's columns (the reference SDK's columns). Text tables show control characters
escaped (``broker.text.printable``: a name cannot retitle or clear a terminal); HTML tables
are HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, overload

import msgspec

from broker import names
from broker.text import printable

NONE = "-"


@overload
def iso(value: datetime | None) -> str: ...
@overload
def iso(value: datetime | None, *, none: None) -> str | None: ...
def iso(value: datetime | None, *, none: str | None = NONE) -> str | None:
    """ISO-8601 with the zone, to the second (``2024-05-01T12:00:00+00:00``)."""
    return none if value is None else value.isoformat(timespec="seconds")


def jsonable(record: Any) -> dict[str, Any]:
    """A wire record as a dict of JSON values (times in full ISO-8601 with their zone; a
    ``workspace`` by its name, never the empty label of the default workspace)."""
    data: dict[str, Any] = msgspec.to_builtins(record)
    if data.get("workspace") == "":
        data["workspace"] = names.DEFAULT_WORKSPACE
    return data


def short_sha(sha: str) -> str:
    return f"{sha[:6]}...{sha[-6:]}" if len(sha) > 12 else sha


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [[_one_line(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def text_fields(fields: Mapping[str, str]) -> str:
    width = max((len(k) for k in fields), default=0)
    return "\n".join(f"{k.ljust(width)}  {_one_line(v)}" for k, v in fields.items())


def html_fields(fields: Mapping[str, str]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in fields.items()
    )
    return f"<table>{rows}</table>"


def _one_line(text: str) -> str:
    """One table cell for a terminal: newlines and every other control character escaped."""
    return printable(text)


class Displayable(Protocol):
    def _display(self) -> dict[str, str]: ...


class Shown:
    """Mixin: ``repr``/``str``/``_repr_html_`` of one object from its ``_display()``."""

    def _display(self) -> dict[str, str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return text_fields(self._display())

    def __str__(self) -> str:
        return text_fields(self._display())

    def _repr_html_(self) -> str:
        return html_fields(self._display())


D = TypeVar("D", bound=Displayable)


class ShownList(list[D]):
    """A list of objects shown as one table with ``columns``."""

    columns: tuple[str, ...] = ()
    empty = "(empty)"

    def _rows(self) -> list[list[str]]:
        return [[item._display().get(c, NONE) for c in self.columns] for item in self]

    def __repr__(self) -> str:
        if not self:
            return self.empty
        return text_table(self.columns, self._rows())

    def __str__(self) -> str:
        return self.__repr__()

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{html.escape(self.empty)}</p>"
        return html_table(self.columns, self._rows())
