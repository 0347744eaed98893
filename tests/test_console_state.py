"""The console's state layer without a terminal or a server: filters, the log buffer and its
layout, task summaries, commands, formatting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rich.text import Text

from broker.models import ConnectionRecord, LogLine, RunRecord, TaskRecord
from broker.status import RunStatus, TaskKind, TaskStatus, task_status
from console import commands, query
from console.format import age, countdown, short_sha, span
from console.logdoc import LogDocument, LogLayout, LogSearch, clean, plain, width_of
from console.state import ConsoleState, ExecutorEntry, ExecutorHealth
from tests.test_console_support import FROZEN, uid

FIELDS = ("name", "status", "type")


def row(name: str, status: str, type_: str = "Temporary Run") -> dict[str, str]:
    return {"name": name, "status": status, "type": type_}


ROWS = [row("[prod] backup", "failed"), row("nightly", "success"), row("ingest", "started")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["[prod] backup", "nightly", "ingest"]),
        ("status=failed", ["[prod] backup"]),
        ("status=failed,success", ["[prod] backup", "nightly"]),
        ("!status=failed", ["nightly", "ingest"]),
        ("status!=failed", ["nightly", "ingest"]),
        ("[prod]", ["[prod] backup"]),
        ("!night", ["[prod] backup", "ingest"]),
        ("name~in status=started", ["ingest"]),
        ("NIGHTLY", ["nightly"]),
    ],
)
def test_filter_language(text: str, expected: list[str]) -> None:
    q = query.parse(text, FIELDS)
    assert not q.error
    assert [r["name"] for r in ROWS if q.matches(r)] == expected


def test_filter_reports_unknown_columns_and_applies_aliases() -> None:
    q = query.parse("colour=red", FIELDS)
    assert "unknown column 'colour'" in q.error
    aliased = query.parse("status=failure", FIELDS, {"status": {"failure": "failed"}})
    assert [r["name"] for r in ROWS if aliased.matches(r)] == ["[prod] backup"]


def line(seq: int, text: str = "x", stream: str = "stdout") -> LogLine:
    return LogLine(seq=seq, ts=FROZEN, stream=stream, text=text)  # type: ignore[arg-type]


def test_log_document_batches_drops_replays_and_counts_gaps() -> None:
    doc = LogDocument()
    doc.push([line(1), line(2), line(3)])
    doc.push([line(2), line(3)])  # a replay after a reconnect
    doc.push([line(6)], eof=True)  # 4 and 5 never arrived
    assert doc.drain() == (4, 0)
    assert [entry.seq for entry in doc.lines] == [1, 2, 3, 6]
    assert doc.missing == 2 and doc.eof


def test_log_document_is_a_ring_buffer() -> None:
    doc = LogDocument(max_lines=1000)
    doc.push([line(i) for i in range(1, 1501)])
    added, dropped = doc.drain()
    assert added == 1500 and dropped > 500
    assert len(doc.lines) <= 1000 and doc.first == dropped
    assert doc.line(doc.end - 1).seq == 1500


def test_layout_filters_streams_and_wraps_by_width() -> None:
    doc = LogDocument()
    doc.push([line(1, "a" * 25), line(2, "err", "stderr"), line(3, "b" * 5)])
    doc.drain()
    layout = LogLayout(doc)
    layout.configure(streams=None, wrap=None, prefix=2)
    assert layout.rows == 3 and layout.max_width == 25
    layout.configure(streams=frozenset({"stdout"}), wrap=10, prefix=2)
    assert layout.rows == 3 + 1  # 25 chars → 3 rows, 5 chars → 1 row, stderr hidden
    assert layout.locate(2) == (0, 2) and layout.locate(3) == (2, 0)
    assert layout.row_of(2) == 3
    doc.push([line(4, "c" * 11)])
    doc.drain()
    assert layout.extend() == 2


def test_layout_survives_the_ring_buffer_dropping_old_lines() -> None:
    doc = LogDocument(max_lines=100)
    layout = LogLayout(doc)
    layout.configure(streams=frozenset({"stdout"}), wrap=10, prefix=0)
    doc.push([line(i, "x" * 25, "stderr" if i % 2 else "stdout") for i in range(1, 151)])
    doc.drain()
    assert doc.first == 60
    layout.extend()
    assert layout.rows == 45 * 3  # 45 stdout lines kept, 3 rows each
    assert layout.locate(0) == (61, 0) and layout.locate(4) == (63, 1)
    assert layout.row_of(63) == 3
    doc.push([line(151, "y")])
    doc.drain()
    layout.extend()
    assert layout.rows == 45 * 3 + 1 and layout.locate(135) == (150, 0)


def test_search_finds_visible_text_only_and_moves_both_ways() -> None:
    doc = LogDocument()
    doc.push(
        [line(i, f"\x1b[31mstep {i}\x1b[0m" if i % 3 == 0 else f"noise {i}") for i in range(1, 11)]
    )
    doc.drain()
    layout = LogLayout(doc)
    layout.rebuild()
    search = LogSearch(layout, "STEP")
    assert search.matches == [2, 5, 8]  # line numbers (0-based) of seq 3, 6, 9
    assert search.next_after(2) == 5 and search.previous_before(5) == 2
    assert LogSearch(layout, "31m").matches == []  # escape codes are not text


def test_colours_render_and_other_control_characters_show_escaped() -> None:
    raw = "\x1b[1;32mok\x1b[0m\tdone [/bold]\x07"
    assert plain(raw) == "ok      done [/bold]\\x07"
    assert Text.from_ansi(clean(raw)).plain == plain(raw)
    # a carriage return could hide what came before it: shown, not obeyed
    assert plain("progress 10%\rprogress 100%") == "progress 10%\\rprogress 100%"
    assert plain("osc \x1b]52;c;aGk=\x07 \x9b2J \x1b[2J") == (
        "osc \\x1b]52;c;aGk=\\x07 \\x9b2J \\x1b[2J"
    )
    assert width_of("a\x07") == 5 and width_of("日本") == 4


def test_task_summary_matches_task_status() -> None:
    state = ConsoleState(["nats://x"])
    task = TaskRecord(
        id=uid(1), name="t", orchestration_id=uid(2), kind=TaskKind.RUN_ONCE,
        created_at=FROZEN, updated_at=FROZEN,
    )  # fmt: skip
    runs = [
        RunRecord(task_id=task.id, run_id=uid(10 + i), status=status,
                  created_at=FROZEN + timedelta(seconds=i))
        for i, status in enumerate([RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.RUNNING])
    ]  # fmt: skip
    for run in runs:  # runs may arrive before their task
        state.apply_run(f"{task.key}.{run.run_id}", run)
    state.apply_task(task.key, task)
    assert state.status_of(task.key) == task_status(task, runs) == TaskStatus.STARTED
    state.apply_run(f"{task.key}.{runs[2].run_id}", None)  # the newest run deleted
    assert state.status_of(task.key) == TaskStatus.FAILED
    killed = TaskRecord(**{**{f: getattr(task, f) for f in task.__struct_fields__}, "killed": True})
    state.apply_task(task.key, killed)
    assert state.status_of(task.key) == TaskStatus.KILLED and not state.is_active(task.key)
    assert state.run_count == 2


def test_executor_health_by_heartbeat_age() -> None:
    from broker.models import ExecutorRecord

    record = ExecutorRecord(
        id="e", host="h", pid=1, pool="default", slots=1, started_at=FROZEN, heartbeat_at=FROZEN
    )
    entry = ExecutorEntry(record)
    assert entry.health(FROZEN + timedelta(seconds=1)) is ExecutorHealth.ALIVE
    assert entry.health(FROZEN + timedelta(seconds=4)) is ExecutorHealth.STALE
    assert entry.health(FROZEN + timedelta(seconds=7)) is ExecutorHealth.LOST
    entry.gone = True
    assert entry.health(FROZEN) is ExecutorHealth.LOST


def test_commands_resolve_aliases_and_status_words() -> None:
    resolved = commands.resolve(":runs failed")
    assert resolved is not None and resolved[0].name == "runs"
    assert commands.filter_for(resolved[1]) == "status=failed"
    assert commands.filter_for("name~x") == "name~x"
    assert commands.resolve("exec")[0].name == "executors"  # type: ignore[index]
    assert commands.resolve("nope") is None


def test_formatting() -> None:
    assert span(0.25) == "250ms" and span(4.2) == "4.2s" and span(125) == "2m05s"
    assert span(3 * 3600 + 120) == "3h02m" and span(2 * 86400 + 3600) == "2d01h"
    assert age(FROZEN - timedelta(seconds=30), FROZEN) == "30s ago"
    assert countdown(FROZEN + timedelta(minutes=5), FROZEN) == "in 5m00s"
    assert short_sha("a" * 64) == "aaaaaa...aaaaaa"


def test_same_named_connections_of_two_workspaces_are_two_rows() -> None:
    """Users of workspaces that cannot see each other may pick one name: an operator granted
    both sees two connections, and a copy's deletion changes only its own."""
    state = ConsoleState(["nats://x"])

    def made(ident: str, workspaces: list[str]) -> ConnectionRecord:
        return ConnectionRecord(
            name="db", connection_type=ident, details_token="t", workspaces=workspaces,
            created_at=FROZEN, id=ident,
        )  # fmt: skip

    state.apply_connection("team-a.db", made("a", ["team-a", "team-c"]))
    state.apply_connection("team-c.db", made("a", ["team-a", "team-c"]))
    state.apply_connection("team-b.db", made("b", ["team-b"]))
    assert sorted(r.connection_type for r in state.connections.values()) == ["a", "b"]
    state.apply_connection("team-a.db", None)
    assert sorted(r.connection_type for r in state.connections.values()) == ["a", "b"]
    state.apply_connection("team-c.db", None)
    assert [r.connection_type for r in state.connections.values()] == ["b"]
    state.apply_connection("team-b.db", made("b2", ["team-b"]))  # a new one at the same key
    assert [r.connection_type for r in state.connections.values()] == ["b2"]
