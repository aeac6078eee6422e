"""The live view: frames from real reports, nothing off a terminal, failures that change
nothing for the program, and the view in a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

import loopwatch
from loopwatch._format import duration, short_path
from loopwatch.live import LiveView, live_available, render_frame, sparkline
from loopwatch.model import Block, BlockingCall, LoopStats, Report, Site, Stall

BARS = "▁▂▃▄▅▆▇█"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SHOW_CURSOR = "\x1b[?25h"
DURATION = r"[\d.,]+ m?s"


def blocking_step() -> None:
    time.sleep(0.1)  # the blocking line


SLEEP_LINE = inspect.getsourcelines(blocking_step)[1] + 1
SITE = f"{short_path(__file__)}:{SLEEP_LINE}"


async def service(rounds: int = 8) -> None:
    # a third of each second busy, for a little over two seconds: two whole windows
    for _ in range(rounds):
        blocking_step()
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def report() -> Report:
    """A real report: eight 100 ms sleeps at one line, a 50 ms threshold."""
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(service())
    result = session.report()
    assert len(result.blocks) == 8, result
    assert len(result.loops) == 1 and len(result.loops[0].timeline) >= 2, result.loops
    return result


def terminal(width: int = 120) -> Console:
    """A console that takes itself for a terminal, writing to memory."""
    return Console(file=io.StringIO(), force_terminal=True, width=width, record=True,
                   color_system="standard")


def frame_text(report: Report | None, **options: object) -> list[str]:
    console = terminal()
    options.setdefault("width", console.width)
    console.print(render_frame(report, **options))  # type: ignore[arg-type]
    return [line.rstrip() for line in console.export_text().splitlines()]


def output(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def last_frame(console: Console) -> str:
    """The text of the last frame drawn on ``console`` (each one begins with the header)."""
    text = ANSI.sub("", output(console))
    assert "loopwatch live" in text, text
    return "loopwatch live" + text.rsplit("loopwatch live", 1)[1]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(autouse=True)
def a_capable_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consoles here take themselves for terminals; a CI's TERM=dumb must not stop them."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Exceptions that escaped a thread (the drawing thread must never let one out)."""
    escaped: list[str] = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: escaped.append(f"{args.exc_type.__name__}: {args.exc_value}"))
    yield escaped
    assert not escaped


def drawing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "loopwatch-live"]


# -- a frame from a real report -------------------------------------------------------


def test_frame_shows_the_loop_its_sparkline_the_block_and_the_site(report: Report) -> None:
    """One frame: a row per loop (sparkline, latest second, lag), the block, the sites."""
    (stats,) = report.loops
    lines = frame_text(report, elapsed=3.0)
    text = "\n".join(lines)
    assert re.fullmatch(rf"loopwatch live · 0:03 · 8 blocks over 50\.0 ms, {DURATION} blocked · "
                        r"Ctrl-C to stop", lines[0]), lines[0]

    # the loop's name may give way a little (loops are numbered: long suites, long names)
    loop_line = lines[lines.index("Loops") + 2]
    assert loop_line.startswith("  _UnixSelectorEventLoop#"), loop_line
    expected = "".join(BARS[min(7, int(share * 8))] for _, share, _ in stats.timeline)
    assert re.search(rf" {expected}  ", loop_line), (expected, loop_line)
    assert stats.last_window is not None
    assert f" {stats.last_window:.0%} " in loop_line  # the latest whole second
    assert stats.lag_p99 is not None and stats.lag_max is not None
    assert f" {duration(stats.lag_p99)} " in loop_line
    assert re.search(r" 8(  |$)", loop_line)  # blocks in the last minute

    newest = lines[lines.index("Latest blocks") + 2]
    assert re.fullmatch(rf"\s+(now|\d s ago)\s+{DURATION}  wait  {re.escape(SITE)}  "
                        r"blocking_step  Task-\d+", newest), newest
    sites = lines[lines.index("Worst sites") + 1:]
    assert sites[0].split() == ["count", "total", "max", "site"]
    assert re.fullmatch(rf"\s+8\s+{DURATION}\s+{DURATION}  {re.escape(SITE)} in blocking_step",
                        sites[1]), sites[1]
    assert "Traceback" not in text


def test_view_draws_the_running_session(no_thread_errors: list[str]) -> None:
    """LiveView(session.report) redraws while the program runs, then erases itself."""
    console = terminal()
    with loopwatch.watch(threshold=0.05) as session:
        with LiveView(session.report, console=console, refresh_per_second=20) as view:
            assert view.active
            asyncio.run(service(rounds=3))
            assert wait_for(lambda: SITE in last_frame(console))
        assert not view.active
    assert view.frames >= 2
    assert not drawing_threads()
    assert SHOW_CURSOR in output(console).rsplit("loopwatch live", 1)[1]
    assert "blocking_step" in last_frame(console)


# -- hand-made reports: exact numbers ---------------------------------------------------

NOW = 1_700_000_000.0
LOOP = "_UnixSelectorEventLoop#1 (MainThread)"


def block(started: float, site: str, function: str, **fields: object) -> Block:
    values: dict[str, object] = dict(
        id=1, loop=LOOP, started=started, duration=0.2, cpu_ratio=1.0, kind="cpu",
        frames=(), site=site, function=function, task="Task-3", pid=100,
    )
    values.update(fields)
    return Block(**values)  # type: ignore[arg-type]


def stats(shares: list[float], last_start: float, **fields: object) -> LoopStats:
    timeline = tuple((last_start - (len(shares) - 1 - i), share, None)
                     for i, share in enumerate(shares))
    values: dict[str, object] = dict(
        loop=LOOP, iterations=None, busy=0.0, watched=float(len(shares)), blocks=3,
        busy_fraction_sampled=0.2, worst_window=max(shares), last_window=shares[-1],
        lag_p50=0.001, lag_p99=0.15, lag_max=0.21, pid=100, timeline=timeline,
    )
    values.update(fields)
    return LoopStats(**values)  # type: ignore[arg-type]


def test_sparkline_steps_of_an_eighth_newest_right() -> None:
    """Each second is one bar, 0-12.5 % the lowest; the newest is at the right edge."""
    loop = stats([0.0, 0.13, 0.5, 0.99, 1.0], last_start=NOW - 1.5)
    assert sparkline(loop, NOW, width=8).plain == "   ▁▂▅██"
    # the last 8 of many seconds
    many = stats([0.05] * 32 + [0.2, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8, 0.9], last_start=NOW - 1.5)
    assert sparkline(many, NOW, width=8).plain == "▂▃▄▄▅▆▇█"
    assert sparkline(many, NOW, width=30).plain == "▁" * 22 + "▂▃▄▄▅▆▇█"


def test_sparkline_of_a_loop_that_stopped_moves_on_with_the_clock() -> None:
    """No window for a while: blank seconds come in at the right, one per second."""
    running = stats([0.5] * 10, last_start=NOW - 4.9)  # a report written now and then
    assert sparkline(running, NOW, width=8).plain == "▅" * 8
    loop = stats([0.5] * 10, last_start=NOW - 6.2)
    assert sparkline(loop, NOW, width=8).plain == "▅▅▅     "
    assert sparkline(stats([0.5] * 10, last_start=NOW - 60), NOW, width=8).plain == " " * 8
    lines = frame_text(Report(threshold=0.1, loops=(loop,)), now=NOW)
    (row,) = [line for line in lines if "EventLoop#1" in line]  # its name gives way a little
    # no share for "now", and it says why
    assert re.search(r"▅ +- +150 ms +210 ms +0  stopped$", row), row


def test_latest_blocks_newest_first_and_blocks_per_minute() -> None:
    """Blocks are listed by when they began, newest first; per minute counts the last 60 s."""
    blocks = (
        block(NOW - 300, "/srv/app/old.py:1", "old"),
        block(NOW - 30, "/srv/app/b.py:20", "second", request="GET /items"),
        block(NOW - 2, "/srv/app/c.py:30", "third", kind="wait", cpu_ratio=0.0),
        block(NOW - 50, "/srv/app/a.py:10", "first"),
    )
    report = Report(threshold=0.1, blocks=blocks, loops=(stats([0.1, 0.4], NOW - 1.5),))
    lines = frame_text(report, now=NOW)
    start = lines.index("Latest blocks") + 1
    assert lines[start].split() == ["when", "duration", "kind", "line", "function", "request",
                                    "task"]
    rows = lines[start + 1:start + 5]
    assert [re.search(r"\S+\.py:\d+", row)[0] for row in rows] == [  # type: ignore[index]
        "/srv/app/c.py:30", "/srv/app/b.py:20", "/srv/app/a.py:10", "/srv/app/old.py:1"]
    assert rows[0].split()[:5] == ["2", "s", "ago", "200", "ms"]
    assert "GET /items" in rows[1]
    assert "5 min ago" in rows[3]
    (row,) = [line for line in lines if LOOP in line]
    assert re.search(r" 150 ms +210 ms +3 +saturated$", row), row  # 3 in the last minute


@pytest.mark.parametrize(("shares", "mark"), [
    ([0.1, 0.4], "saturated"),           # the latest second: busier than 30 %
    ([0.5, 0.1], "saturated earlier"),   # some second before it
    ([0.2, 0.3], ""),
])
def test_saturated_marker(shares: list[float], mark: str) -> None:
    loop = stats(shares, last_start=NOW - 1.5)
    lines = frame_text(Report(threshold=0.1, loops=(loop,)), now=NOW)
    (row,) = [line for line in lines if LOOP in line]
    assert re.search(rf"{shares[-1]:.0%} +150 ms +210 ms +0{'  ' + mark if mark else ''}$",
                     row), row


def test_several_processes_and_loops_are_told_apart() -> None:
    """Loops and blocks name their process when there are several; strict mode's calls."""
    other = "uvloop.Loop#1 (MainThread)"
    loops = (stats([0.1, 0.2], NOW - 1.5), stats([0.0, 0.05], NOW - 1.5, pid=200, loop=other))
    blocks = (block(NOW - 3, "/srv/app/a.py:10", "first"),
              block(NOW - 2, "/srv/app/b.py:20", "second", pid=200, loop=other))
    calls = tuple(BlockingCall("time.sleep", "0.1", "/srv/app/a.py:12", "handler", (), "Task-1",
                               "MainThread", NOW - 1) for _ in range(3))
    text = "\n".join(frame_text(Report(threshold=0.1, blocks=blocks, loops=loops, calls=calls),
                                now=NOW))
    assert re.search(rf"^  pid 100 {re.escape(LOOP)} .* 20% .* 1$", text, re.M), text
    assert re.search(rf"^  pid 200 {re.escape(other)} .*  5% .* 1$", text, re.M), text
    assert re.search(rf"/srv/app/b\.py:20  second +Task-3  pid 200 {re.escape(other)}$",
                     text, re.M), text
    assert " · 3 blocking calls (strict) · " in text
    assert "\n  3 x time.sleep  at /srv/app/a.py:12 in handler" in text


def test_a_narrow_terminal_gets_narrower_columns_not_wrapped_lines() -> None:
    """At 80 columns: nothing wraps, paths keep their line numbers, the sparkline shrinks."""
    path = "/srv/app/very/long/package/path/to/the/module_with_a_long_name.py:1234"
    report = Report(
        threshold=0.1, loops=(stats([0.2] * 40, NOW - 1.5),),
        blocks=(block(NOW - 1, path, "a_function_with_a_long_name",
                      request="GET /a/very/long/route/{with}/{params}/and/more"),),
        sites=(Site(path, "a_function_with_a_long_name", 3, 0.3, 0.1, 0.1, 1.0, "cpu", ""),),
    )
    console = terminal(width=80)
    console.print(render_frame(report, now=NOW, width=80))
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    assert re.search(r" ▂{10}  20% ", lines[lines.index("Loops") + 2])
    (row,) = [line for line in lines if "1 s ago" in line]
    assert re.search(r"  …\S*name\.py:1234  a_function_\S*  GET /\S*  Task-3$", row), row
    assert re.search(r"  …\S*\.py:1234 in a_function_with_a_long_name$", lines[-1]), lines


def test_header_counts_dropped_blocks() -> None:
    report = Report(
        threshold=0.1, blocks=(block(NOW - 1, "/srv/app/a.py:1", "f"),), dropped_blocks=41,
        sites=(Site("/srv/app/a.py:1", "f", 42, 8.4, 0.2, 0.2, 1.0, "cpu", "", blocks=42,
                    block_total=8.4),),
    )
    (header, *_) = frame_text(report, elapsed=3725, now=NOW)
    assert header == (
        "loopwatch live · 1:02:05 · 42 blocks over 100 ms, 8.40 s blocked · Ctrl-C to stop")
    assert frame_text(None, elapsed=1)[0] == (
        "loopwatch live · 0:01 · waiting for the first report · Ctrl-C to stop")
    assert frame_text(Report(threshold=0.05))[0] == (
        "loopwatch live · 0:00 · no blocks over 50.0 ms · Ctrl-C to stop")


def test_stalls_are_counted_per_cause_with_the_latest_apart_from_blocks() -> None:
    """Stalls: a count in the header, per cause how many and the longest, the latest one;
    no block row, and nothing wraps at 80 columns."""
    stalls = (
        Stall(LOOP, NOW - 20, 0.152, "starved", queued=0.14, pid=100),
        Stall(LOOP, NOW - 2, 0.31, "paused", queued=0.0, paused=0.3, site="/srv/app/a.py:10",
              function="handler", pid=100),
        Stall(LOOP, NOW - 9, 0.12, "starved", queued=0.11, pid=100),
    )
    report = Report(threshold=0.1, loops=(stats([0.1, 0.2], NOW - 1.5),), stalls=stalls)
    console = terminal(width=80)
    console.print(render_frame(report, now=NOW, width=80))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert lines[0] == "loopwatch live · 0:00 · no blocks over 100 ms · 3 stalls · Ctrl-C to stop"
    start = lines.index("Stalls  (not run by the machine: not your code, not blocks)")
    assert lines[start + 1:start + 3] == [
        "  2 x CPU contention, longest 152 ms · 1 x process stopped, longest 310 ms",
        "  latest 2 s ago: 310 ms process stopped at /srv/app/a.py:10 in handler",
    ]
    assert "Latest blocks" not in lines
    assert all(len(line) <= 80 for line in lines), lines


async def starting_service() -> None:
    await asyncio.sleep(0)
    importlib.import_module("loopwatch_slow_live_start")  # before the loop served anything
    await asyncio.sleep(0.05)
    blocking_step()
    await asyncio.sleep(0.05)


def test_start_up_blocks_are_counted_not_listed(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow import in the running loop is a start-up block: counted apart, not among the
    latest blocks, which show the block after it; its line is a worst site, said to be
    start-up's."""
    (tmp_path / "loopwatch_slow_live_start.py").write_text(
        "import time\ntime.sleep(0.1)  # a slow import\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "loopwatch_slow_live_start", raising=False)
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(starting_service())
    report = session.report()
    assert [b.phase for b in report.blocks] == ["startup", "running"], report.blocks
    lines = frame_text(report)
    rows = lines[lines.index("Latest blocks") + 2:lines.index("Start-up")]
    assert [row for row in rows if row] and all(SITE in row for row in rows if row), rows
    assert not any("loopwatch_slow_live_start" in row for row in rows)
    sites = lines[lines.index("Worst sites") + 2:]
    (startup_site,) = [row for row in sites if "loopwatch_slow_live_start" in row]
    assert startup_site.endswith("loopwatch_slow_live_start.py:2 in <module> (start-up)")
    assert not [row for row in sites if SITE in row and "(start-up)" in row]
    assert lines[lines.index("Start-up") + 1] == (
        "  1 block before the loop served anything: imports, a lifespan's start")
    assert lines[0].startswith("loopwatch live · 0:00 · 2 blocks over 50.0 ms")


# -- off a terminal -----------------------------------------------------------------


def test_off_a_terminal_the_view_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal: nothing drawn, source never called, no thread, stdout left alone."""
    called: list[int] = []

    def source() -> Report:
        called.append(1)
        return Report(threshold=0.1)

    plain = Console(file=io.StringIO(), force_terminal=False, width=120)
    stdout = sys.stdout
    with LiveView(source, console=plain) as view:
        assert not view.active
        assert not drawing_threads()
        assert sys.stdout is stdout
    assert output(plain) == ""

    # a terminal told to keep still
    monkeypatch.setenv("TTY_INTERACTIVE", "0")
    still = terminal()
    with LiveView(source, console=still) as view:
        assert not view.active
    assert output(still) == ""

    # the default console: stderr, here not a terminal
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with LiveView(source) as view:
        assert not view.active
    assert stderr.getvalue() == ""
    assert not called


def open_pty() -> tuple[int, int]:
    """A pseudo-terminal, or a skip where there is none (a chroot without /dev/pts)."""
    try:
        return os.openpty()
    except OSError as error:
        pytest.skip(f"no pseudo-terminal here: {error}")


def test_live_available_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not live_available(io.StringIO())
    assert not live_available(None)
    controller, device = open_pty()
    try:
        with open(device, "w") as tty:
            monkeypatch.setenv("TERM", "xterm-256color")
            assert live_available(tty)
            monkeypatch.setenv("TERM", "dumb")  # cannot move the cursor
            assert not live_available(tty)
        assert not live_available(tty)  # closed
    finally:
        os.close(controller)


# -- failures change nothing for the program ------------------------------------------------


def test_a_source_that_raises_is_logged_once_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture, no_thread_errors: list[str]
) -> None:
    calls: list[int] = []

    def source() -> Report:
        calls.append(1)
        raise RuntimeError("no report yet")

    console = terminal()
    with (
        caplog.at_level(logging.WARNING, logger="loopwatch"),
        LiveView(source, console=console, refresh_per_second=50) as view,
    ):
        assert wait_for(lambda: len(calls) >= 5 and view.frames >= 5)
    warnings = [r for r in caplog.records if "live view" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].exc_info is not None
    assert isinstance(warnings[0].exc_info[1], RuntimeError)
    assert "waiting for the first report" in last_frame(console)
    assert "no fresh report for" in last_frame(console)
    assert not drawing_threads()


def test_after_a_failure_the_view_keeps_the_last_good_report(
    report: Report, caplog: pytest.LogCaptureFixture, no_thread_errors: list[str]
) -> None:
    """A good report, then a source that fails, then one that cannot be drawn."""
    calls: list[int] = []
    broken = Report(threshold=0.05, blocks=("not a block",))  # type: ignore[arg-type]

    def source() -> Report:
        calls.append(1)
        if len(calls) == 1:
            return report
        if len(calls) < 10:
            raise OSError("the report file is being rewritten")
        return broken

    console = terminal()
    with (
        caplog.at_level(logging.WARNING, logger="loopwatch"),
        LiveView(source, console=console, refresh_per_second=50),
    ):
        assert wait_for(lambda: len(calls) >= 5)
        assert wait_for(lambda: "no fresh report for" in last_frame(console))
        assert SITE in last_frame(console)
        assert wait_for(lambda: len(calls) >= 15)
    # the broken report is never drawn: the last frame is the last good one
    assert SITE in last_frame(console)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "could not get a report" in m]) == 1, messages
    assert len([m for m in messages if "could not draw a report" in m]) == 1, messages


def test_any_exception_stops_the_view_and_restores_the_terminal(
    monkeypatch: pytest.MonkeyPatch, no_thread_errors: list[str]
) -> None:
    """Ctrl-C inside the view: the thread stops, the cursor shows, stdout is back."""
    controller, device = open_pty()
    tty = open(device, "w")  # noqa: SIM115 -- closed below, after the view is gone
    try:
        monkeypatch.setattr(sys, "stdout", tty)
        console = terminal()
        with (
            pytest.raises(KeyboardInterrupt),
            LiveView(lambda: Report(threshold=0.1), console=console) as view,
        ):
            assert wait_for(lambda: view.frames >= 1)
            # what the program prints on the terminal goes above the view
            assert sys.stdout is not tty
            print("a line from the program")
            raise KeyboardInterrupt
        assert sys.stdout is tty
        assert not view.active
        assert not drawing_threads()
        raw = output(console)
        assert "a line from the program" in raw
        assert SHOW_CURSOR in raw.rsplit("loopwatch live", 1)[1]
    finally:
        tty.close()
        os.close(controller)


def test_stdout_redirected_to_a_file_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    console = terminal()
    with LiveView(lambda: Report(threshold=0.1), console=console) as view:
        assert view.active
        assert sys.stdout is captured
        print("program output")
    assert captured.getvalue() == "program output\n"
    assert "program output" not in output(console)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_draws_nor_prints_through_the_view(
    monkeypatch: pytest.MonkeyPatch, no_thread_errors: list[str]
) -> None:
    """The child gets its stdout back; the parent draws on with one drawing thread.

    The drawing thread ends before the fork (on Python 3.12+ a thread alive at
    fork() is a DeprecationWarning, an error in this suite) and starts again after.
    """
    controller, device = open_pty()
    tty = open(device, "w")  # noqa: SIM115 -- closed below, after the view is gone
    try:
        monkeypatch.setattr(sys, "stdout", tty)
        console = terminal()
        with LiveView(lambda: Report(threshold=0.1), console=console,
                      refresh_per_second=50) as view:
            assert wait_for(lambda: view.frames >= 1)
            assert sys.stdout is not tty
            (drawing,) = drawing_threads()
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never return into pytest
                try:
                    os.write(write_fd, f"{sys.stdout is tty} {view.active}".encode())
                finally:
                    os._exit(0)
            os.close(write_fd)
            with os.fdopen(read_fd) as answer:
                child = answer.read()
            os.waitpid(pid, 0)
            assert child == "True False"
            frames = view.frames
            assert wait_for(lambda: view.frames > frames + 2)
            (after,) = drawing_threads()
            assert after is not drawing  # ended for the fork, started again after it
        assert not drawing_threads()
    finally:
        tty.close()
        os.close(controller)


def test_refresh_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_per_second"):
        LiveView(lambda: None, refresh_per_second=0)


# -- in a real terminal ---------------------------------------------------------------------

DRIVER = '''\
import asyncio
import time

import loopwatch
from loopwatch.console import print_report
from loopwatch.live import LiveView


def blocking_step():
    time.sleep(0.1)  # the blocking line


async def main():
    while True:
        blocking_step()
        await asyncio.sleep(0.2)


with loopwatch.watch(threshold=0.05) as session:
    try:
        with LiveView(session.report):
            asyncio.run(main())
    except KeyboardInterrupt:
        pass
print_report(session.report())
print("driver: done")
'''
DRIVER_LINE = DRIVER.splitlines().index("    time.sleep(0.1)  # the blocking line") + 1
HEADER = re.compile(r"loopwatch live · (\d+:\d\d)")


class Tmux:
    """A tmux server of our own (its own socket, no user config) with one session."""

    def __init__(self, tmux: str, name: str) -> None:
        self.base = [tmux, "-L", f"loopwatch-test-{os.getpid()}", "-f", os.devnull]
        self.name = name

    def __call__(self, *args: str, **options: object) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10,
                              check=True, **options)  # type: ignore[call-overload]
        return str(done.stdout)

    def capture(self, history: bool = False) -> str:
        """The pane's text; with ``history``, what scrolled off the top too."""
        return self("capture-pane", "-p", *(["-S", "-"] if history else []), "-t", self.name)

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", self.name, fmt).strip()

    def kill(self) -> None:
        """Kill the server, and remove its socket (tmux leaves it behind)."""
        try:
            socket = self("display-message", "-p", "#{socket_path}").strip()
        except subprocess.SubprocessError:
            socket = ""
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)
        if socket:
            Path(socket).unlink(missing_ok=True)

    def wait(self, condition: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Capture the pane until ``condition`` holds for it; the last capture."""
        deadline = time.monotonic() + timeout
        while True:
            pane = self.capture()
            if condition(pane) or time.monotonic() > deadline:
                return pane
            time.sleep(0.1)


def terminal_env() -> dict[str, str]:
    """The environment of a program in the tmux pane: a colour terminal, this loopwatch."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(loopwatch.__file__)))
    env = dict(os.environ, TERM="xterm-256color",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    for name in ("NO_COLOR", "COLUMNS", "LINES"):  # rich would take COLUMNS over the pane's size
        env.pop(name, None)
    return env


def test_live_view_in_a_real_terminal(tmp_path: Path) -> None:
    """tmux runs a program under the view: it updates, Ctrl-C ends it with the report.

    Set LIVE_CAPTURE_TO=FILE to keep a capture of the pane (to look at the layout).
    """
    tmux_path = shutil.which("tmux")
    if tmux_path is None:
        pytest.skip("tmux is not installed")
    (tmp_path / "driver.py").write_text(DRIVER)
    site = f"driver.py:{DRIVER_LINE}"
    env = terminal_env()
    tmux = Tmux(tmux_path, "live")
    # the shell says how the driver exited, then keeps the pane (and the terminal's
    # state, the cursor's included) until the test is done with it
    command = f"{shlex.quote(sys.executable)} driver.py; echo driver exited with $?; read done"
    try:
        tmux("new-session", "-d", "-s", tmux.name, "-x", "160", "-y", "50", "-c", str(tmp_path),
             command, env=env)

        def drawn(pane: str) -> bool:
            loop = [line for line in pane.splitlines() if "EventLoop" in line]
            return site in pane and bool(loop) and bool(
                re.search(rf"[{BARS}]+\s+\d+%", loop[0]))

        first = tmux.wait(drawn)
        assert drawn(first), first
        elapsed = HEADER.search(first)
        assert elapsed is not None, first
        later = tmux.wait(lambda pane: (m := HEADER.search(pane)) is not None
                          and m[1] != elapsed[1] and drawn(pane))
        assert later != first and drawn(later), later
        saved = os.environ.get("LIVE_CAPTURE_TO")
        for path in [tmp_path / "pane.txt", *([Path(saved)] if saved else [])]:
            path.write_text(later)
        assert "Traceback" not in later
        assert "Ctrl-C to stop" in later

        tmux("send-keys", "-t", tmux.name, "C-c")
        end = tmux.wait(lambda pane: "driver exited with" in pane)
        assert "driver: done\ndriver exited with 0\n" in end, end
        end = tmux.capture(history=True)  # the report's top scrolled off a 50-line pane
        assert re.search(r"loopwatch: \d+ blocks over 50\.0 ms", end), end
        assert f"{site} in blocking_step" in end, end
        assert "Ctrl-C to stop" not in end, end  # the view erased itself
        assert "Traceback" not in end, end
        assert tmux.pane("#{cursor_flag}") == "1"  # the cursor shows again
    finally:
        tmux.kill()


APP = '''\
import asyncio
import time


def blocking_step():
    time.sleep(0.1)  # the blocking line


async def main():
    while True:
        blocking_step()
        await asyncio.sleep(0.2)


asyncio.run(main())
'''


def test_loopwatch_run_live_in_a_real_terminal(tmp_path: Path) -> None:
    """`loopwatch run --live app.py`: the view while it runs; Ctrl-C: the report, status 130."""
    tmux_path = shutil.which("tmux")
    if tmux_path is None:
        pytest.skip("tmux is not installed")
    (tmp_path / "app.py").write_text(APP)
    site = f"app.py:{APP.splitlines().index('    time.sleep(0.1)  # the blocking line') + 1}"
    env = terminal_env()
    tmux = Tmux(tmux_path, "run-live")
    command = (f"{shlex.quote(sys.executable)} -m loopwatch run --live --threshold 0.05 app.py; "
               "echo loopwatch exited with $?; read done")
    try:
        tmux("new-session", "-d", "-s", tmux.name, "-x", "160", "-y", "50", "-c", str(tmp_path),
             command, env=env)
        live = tmux.wait(lambda pane: "Ctrl-C to stop" in pane and site in pane)
        assert "Ctrl-C to stop" in live and site in live, live
        tmux("send-keys", "-t", tmux.name, "C-c")
        end = tmux.wait(lambda pane: "loopwatch exited with" in pane)
        assert "loopwatch exited with 130" in end, end
        history = tmux.capture(history=True)
        assert re.search(r"loopwatch: \d+ blocks? over 50\.0 ms", history), history
        assert "app.py: interrupted" in history and "Traceback" not in history
        assert "Ctrl-C to stop" not in history  # the view erased itself
    finally:
        tmux.kill()
