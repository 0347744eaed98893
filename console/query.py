"""The ``/`` filter language, shared by every table.

A filter is space-separated terms, all of which must hold:

- ``backup``             the text appears in any column (case-insensitive);
- ``status=failed``      a column equals one of the comma-separated values
  (``status=failed,timed_out``);
- ``name~nightly``       a column contains the text;
- ``!term``, ``f!=v``    the inverse of a term (``!status=success``, ``status!=success``).

Unknown column names are reported, not silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_TERM = re.compile(r"^(?P<field>[a-z_]+)(?P<op>!=|=|~)(?P<value>.*)$")


@dataclass(frozen=True)
class Term:
    field: str | None  # None: any column
    values: tuple[str, ...]
    exact: bool
    negate: bool

    def holds(self, row: Mapping[str, str], haystack: str) -> bool:
        if self.field is None:
            found = any(v in haystack for v in self.values)
        else:
            cell = row.get(self.field, "").lower()
            if self.exact:
                found = cell in self.values
            else:
                found = any(v in cell for v in self.values)
        return found != self.negate


@dataclass(frozen=True)
class Query:
    text: str = ""
    terms: tuple[Term, ...] = ()
    error: str = ""
    fields: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        return bool(self.terms)

    def matches(self, row: Mapping[str, str], haystack: str | None = None) -> bool:
        if not self.terms:
            return True
        if haystack is None:
            haystack = " ".join(row.values()).lower()
        return all(term.holds(row, haystack) for term in self.terms)


def parse(
    text: str,
    fields: tuple[str, ...],
    aliases: Mapping[str, Mapping[str, str]] | None = None,
) -> Query:
    """Parse a filter; ``aliases`` map, per column, user words to the values cells hold
    (``status``: ``failed`` → ``failure`` in the runs table)."""
    aliases = aliases or {}
    terms: list[Term] = []
    errors: list[str] = []
    for raw in text.split():
        negate = raw.startswith("!")
        body = raw[1:] if negate else raw
        if not body:
            continue
        match = _TERM.match(body.lower())
        if match is None:
            terms.append(Term(None, (body.lower(),), exact=False, negate=negate))
            continue
        name, op, value = match.group("field", "op", "value")
        if name not in fields:
            errors.append(f"unknown column {name!r} (columns: {', '.join(fields)})")
            continue
        words = aliases.get(name, {})
        values = tuple(words.get(v, v) for v in value.split(",") if v)
        if not values:
            errors.append(f"{name}{op} needs a value")
            continue
        terms.append(Term(name, values, exact=op != "~", negate=negate != (op == "!=")))
    return Query(text=text, terms=tuple(terms), error="; ".join(errors), fields=fields)
