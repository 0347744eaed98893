"""The run logs screen against a real server: history then live tail, follow and the new-lines
marker, ANSI colours, markup-looking lines, search, wrap, time zones, streams, a big burst."""

from __future__ import annotations

import asyncio
import time
from zoneinfo import ZoneInfo

from rich.style import Style
from textual import events

from broker.connection import Bus
from broker.server import EmbeddedServer
from broker.settings import ConnectSettings
from console.app import TaskbusApp
from console.clock import Clock
from console.screens.run_logs import RunLogsScreen, SearchBar
from console.state import Link
from console.widgets.key_bar import KeyBar
from console.widgets.log_view import LogView
from console.widgets.record_table import RecordTable
from tests.test_console_support import (
    FROZEN,
    LOG_LINES,
    SIZE,
    Standard,
    make_app,
    publish_logs,
    screen_text,
    seed_standard,
    settled,
    wait_for,
    wait_loaded,
)


async def open_logs(pilot: object, data: Standard) -> LogView:
    """From the Tasks view: highlight the running task, ``l`` opens its newest run's logs."""
    app = pilot.app  # type: ignore[attr-defined]
    await wait_loaded(pilot)  # type: ignore[arg-type]
    assert app.screen.query_one(RecordTable).select_key(data.once.key)
    await pilot.press("l")  # type: ignore[attr-defined]
    assert isinstance(app.screen, RunLogsScreen)
    view = app.screen.query_one(LogView)
    await wait_for(pilot, lambda: view.lines_map.count >= LOG_LINES)  # type: ignore[arg-type]
    await settled(pilot)  # type: ignore[arg-type]
    return view


async def test_history_then_live_tail_with_follow(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        assert view.follow
        text = screen_text(app)
        assert "line 199" in text and "line 0 " not in text  # the end of the history shows
        assert "hello once" in text and "running" in text and "200 lines" in text
        await publish_logs(
            bus, data.once.key, data.running.run_id, [f"live {i}" for i in range(50)],
            first_seq=LOG_LINES + 1,
        )  # fmt: skip
        await wait_for(pilot, lambda: "live 49" in screen_text(app))
        assert view.follow and view.scroll_y == view.max_scroll_y
        # lines the stream lost (a sequence gap of 4) are counted in the header
        await publish_logs(
            bus, data.once.key, data.running.run_id, ["after the gap"],
            first_seq=LOG_LINES + 50 + 5,
        )  # fmt: skip
        await wait_for(pilot, lambda: "after the gap" in screen_text(app))
        await wait_for(pilot, lambda: "dropped 4" in screen_text(app))


async def test_scroll_up_stops_follow_and_counts_new_lines(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        await pilot.press("pageup")
        assert not view.follow
        top = view.scroll_y
        await publish_logs(
            bus, data.once.key, data.running.run_id, [f"new {i}" for i in range(30)],
            first_seq=LOG_LINES + 1,
        )  # fmt: skip
        await wait_for(pilot, lambda: "30 new lines" in screen_text(app))
        assert view.scroll_y == top  # the view stayed where the person put it
        assert "new 29" not in screen_text(app)
        await pilot.press("end")
        await settled(pilot)
        text = screen_text(app)
        assert view.follow and "new lines" not in text and "new 29" in text
        # A taller terminal or wrap lowers the scroll maximum: that is not scrolling up.
        await pilot.resize_terminal(SIZE[0], SIZE[1] + 10)
        await settled(pilot)
        await pilot.press("w")
        await settled(pilot)
        await pilot.resize_terminal(*SIZE)
        await settled(pilot)
        assert view.follow and "new lines" not in screen_text(app)
        # the mouse wheel stops following too
        view.post_message(events.MouseScrollUp(view, 5, 5, 0, -1, 0, False, False, False))
        await wait_for(pilot, lambda: not view.follow)


async def test_ansi_colours_render_and_markup_is_never_parsed(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        await publish_logs(
            bus, data.once.key, data.running.run_id,
            ["[/bold] closes nothing", "[red]not red[/red] \x1b[1;32mgreen\x1b[0m done"],
            first_seq=LOG_LINES + 1,
        )  # fmt: skip
        await wait_for(pilot, lambda: "done" in screen_text(app))
        text = screen_text(app)
        assert "[/bold] closes nothing" in text
        assert "[red]not red[/red] green done" in text
        assert "\x1b" not in text and "[1;32m" not in text and "[0m" not in text
        row = view.max_scroll_y + view.scrollable_content_region.height - 1
        strip = view.render_line(row - round(view.scroll_y))
        green = [seg for seg in strip if seg.text == "green"]
        assert green and green[0].style is not None
        assert green[0].style.color is not None and green[0].style.bold
        plain = [seg for seg in strip if "not red" in seg.text]  # markup is not applied
        assert plain and plain[0].style is not None
        assert plain[0].style.color != Style.parse("red").color


async def test_search_highlights_and_n_moves_keeping_context(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        await pilot.press("slash", *"line 1", "2")  # "line 12": 12 and 120-129
        await settled(pilot)
        bar, keys = app.screen.query_one(SearchBar), app.screen.query_one(KeyBar)
        assert bar.region.height == 1 and not bar.region.overlaps(keys.region)  # typing shows
        await pilot.press("enter")
        await settled(pilot)
        assert view.search is not None and len(view.search.matches) == 11
        assert not view.follow
        first = view.current
        assert first is not None and view.doc.line(first).text.startswith("line 12 ")
        text = screen_text(app)
        assert "line 11 " in text and "line 13 " in text  # context stays on screen
        assert "/line 12/ 1/11" in text
        await pilot.press("n")
        assert view.doc.line(view.current or 0).text.startswith("line 120 ")
        await pilot.press("N", "N")  # back past the first match: wraps to the last
        assert view.doc.line(view.current or 0).text.startswith("line 129 ")
        # the match is highlighted with the theme's warning colour
        current = view.current or 0
        y = view.lines_map.row_of(current) - round(view.scroll_y)
        highlight = view.get_component_rich_style("log-view--current")
        assert any(
            seg.style and seg.style.bgcolor == highlight.bgcolor for seg in view.render_line(y)
        )
        await pilot.press("escape")  # clears the search, stays on the logs
        assert view.search is None and isinstance(app.screen, RunLogsScreen)


async def test_wrap_time_zone_and_stream_filter(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    clock = Clock.frozen(FROZEN, local=ZoneInfo("Asia/Kolkata"))  # UTC+05:30
    app = TaskbusApp(ConnectSettings(urls=[nats_url]), clock=clock, freeze_gc=False)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        text = screen_text(app)
        assert "17:28:20.200" in text  # line 199 at 11:58:20.200 UTC, shown in local time
        await pilot.press("z")
        assert "11:58:20.200" in screen_text(app) and "· UTC" in screen_text(app)
        await publish_logs(
            bus, data.once.key, data.running.run_id, ["w" * 400], first_seq=LOG_LINES + 1
        )
        await wait_for(pilot, lambda: view.lines_map.count == LOG_LINES + 1)
        rows = view.lines_map.rows
        await pilot.press("w")
        assert view.lines_map.rows >= rows + 3  # 400 characters take several rows now
        await pilot.press("w", "s")  # stdout only
        assert (
            all(view.doc.line(n).stream != "stderr" for n in view.lines_map.numbers())
            and view.lines_map.count < LOG_LINES
        )
        await pilot.press("s")  # stderr only
        assert {view.doc.line(n).stream for n in view.lines_map.numbers()} == {"stderr"}
        await settled(pilot)
        assert "line 196 " in screen_text(app) and "line 195 " not in screen_text(app)


async def test_a_burst_of_100k_lines_keeps_the_ui_responsive(bus: Bus, nats_url: str) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        total = 100_000
        await publish_logs(
            bus, data.once.key, data.running.run_id,
            [f"burst {i} \x1b[33mwarn\x1b[0m" for i in range(total)],
            first_seq=LOG_LINES + 1, batch=1000,
        )  # fmt: skip
        worst = 0.0
        while view.lines_map.count < LOG_LINES + total:
            started = time.monotonic()
            await pilot.press("up" if worst == 0.0 else "down")
            worst = max(worst, time.monotonic() - started)
            await pilot.pause(0.01)
        assert worst < 0.5, f"a key press took {worst:.3f}s during the burst"
        await pilot.press("end")
        await settled(pilot)
        assert f"burst {total - 1} warn" in screen_text(app)
        assert view.doc.missing == 0


async def test_the_tail_resumes_after_a_nats_restart_without_gaps_or_repeats(
    bus: Bus, nats_url: str, nats_server: EmbeddedServer
) -> None:
    data = await seed_standard(bus)
    app = make_app(nats_url)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_logs(pilot, data)
        await asyncio.to_thread(nats_server.stop)
        await wait_for(pilot, lambda: app.state.link is Link.RECONNECTING)
        await asyncio.to_thread(nats_server.start)
        await wait_for(pilot, lambda: app.state.link is Link.CONNECTED, timeout_s=20)
        await wait_for(pilot, lambda: bus.connected, timeout_s=20)
        await publish_logs(
            bus, data.once.key, data.running.run_id, [f"after {i}" for i in range(20)],
            first_seq=LOG_LINES + 1,
        )  # fmt: skip
        await wait_for(pilot, lambda: "after 19" in screen_text(app), timeout_s=10)
        seqs = [view.doc.line(n).seq for n in view.lines_map.numbers()]
        assert seqs == list(range(1, LOG_LINES + 21))  # every line once, in order
        assert view.doc.missing == 0
