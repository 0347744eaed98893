"""The ``:`` command line: names, aliases and arguments, resolved without Textual."""

from __future__ import annotations

from dataclasses import dataclass

from broker.status import OrchestrationStatus, RunStatus, TaskStatus


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    args: str
    help: str


VIEWS = ("tasks", "runs", "orchestrations", "executors", "connections")

COMMANDS = (
    Command("tasks", ("task", "t"), "[status|filter]", "tasks, e.g. :tasks failed"),
    Command("runs", ("run", "r"), "[status|filter]", "every run, newest first, e.g. :runs failed"),
    Command("orchestrations", ("orchestration", "orchs", "orch", "o"), "[filter]", "uploads"),
    Command("executors", ("executor", "exec", "ex", "e"), "[filter]", "executors and health"),
    Command("connections", ("connection", "conns", "conn", "c"), "[filter]", "data connections"),
    Command(
        "workspace",
        ("ws", "w"),
        "[name]",
        "show one workspace in every view; no name: all (w cycles)",
    ),
    Command("upload", ("up", "u"), "", "upload an orchestration zip (to the workspace shown)"),
    Command("theme", (), "<name>", "switch the colour theme"),
    Command("help", ("h", "?"), "", "keys, commands and the filter syntax"),
    Command("quit", ("q", "exit"), "", "leave the console"),
)

_BY_NAME = {alias: c for c in COMMANDS for alias in (c.name, *c.aliases)}
_STATUS_WORDS = (
    {s.value for s in TaskStatus}
    | {s.value for s in RunStatus}
    | {s.value for s in OrchestrationStatus}
    | {"failed", "alive", "stale", "lost"}
)


def resolve(text: str) -> tuple[Command, str] | None:
    """``"runs failed"`` → (the runs command, ``"failed"``); None when unknown."""
    word, _, rest = text.strip().lstrip(":").partition(" ")
    command = _BY_NAME.get(word.lower())
    if command is None:
        return None
    return command, rest.strip()


def filter_for(arg: str) -> str:
    """A bare status word means ``status=<word>``; anything else is a filter as typed."""
    if arg and " " not in arg and "=" not in arg and arg.lower() in _STATUS_WORDS:
        return f"status={arg.lower()}"
    return arg


def suggestions() -> list[str]:
    return [f"{c.name} " if c.args else c.name for c in COMMANDS]
