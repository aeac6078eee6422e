"""A live view of a watch, redrawn in the terminal while the program runs.

It shows each loop's busy share over the last seconds (and its latest second),
its lag and blocks per minute, the latest blocks (start-up blocks are only
counted), the stalls (how many per cause, and the latest) and the worst sites. Like the
console report it only formats: every number comes from the
:class:`~loopwatch.model.Report` that ``source`` returns, a running session's
``report`` or the latest report a watched process wrote.

>>> import asyncio, loopwatch
>>> from loopwatch.console import print_report
>>> async def main():
...     await asyncio.sleep(0)
>>> with loopwatch.watch(threshold=0.05) as session:
...     with LiveView(session.report):   # does nothing off a terminal
...         asyncio.run(main())
>>> print_report(session.report(), file=sys.stdout)  # doctest: +ELLIPSIS
loopwatch: no blocks over 50.0 ms...

The view goes when it ends (``transient``), so that the full report printed
after it takes its place.
"""

from __future__ import annotations

import heapq
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import NamedTuple, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.segment import Segment, SegmentLines
from rich.text import Text

from loopwatch._core.forking import join_for_fork
from loopwatch._format import (
    STALL_CAUSE_SHORT,
    STARTUP_MEANING,
    duration,
    percent,
    plural,
    short_site,
)
from loopwatch._log import forget_owner, log_once
from loopwatch.model import Block, LoopStats, Report

#: One-second windows in a loop's busy sparkline.
SPARK_WINDOWS = 30

#: Rows of the latest blocks, worst sites and loops shown.
LATEST_BLOCKS = 5
WORST_SITES = 5
MAX_LOOPS = 8

#: Busy share 0-100 % in eight steps of 12.5 %.
_BARS = "▁▂▃▄▅▆▇█"

#: A running loop's latest whole window began one to two seconds ago (a window
#: is closed at the first look after its end). Older than this, no new window
#: came: the loop stopped, or the report stopped coming (a watched process that
#: writes its report now and then is given a few seconds).
_STOPPED_AFTER = 5.0

#: Seconds a block's ``started`` counts towards "blocks per minute".
_MINUTE = 60.0

#: How long leaving the view waits for a draw in progress: a ``source`` that
#: hangs must not hang the program's exit.
_JOIN_TIMEOUT = 1.0

_KIND_STYLE = {"cpu": "bold red", "wait": "bold yellow", "mixed": "bold magenta",
               "gc": "bold blue"}
_INDENT = 2


def live_available(file: TextIO | None) -> bool:
    """Whether a live view can be drawn on ``file``: a terminal that can move its cursor.

    >>> import io
    >>> live_available(io.StringIO())
    False
    """
    if file is None:
        return False
    try:
        tty = file.isatty()
    except (AttributeError, ValueError, OSError):  # closed, or not a real stream
        return False
    # rich's own test for terminals that cannot move the cursor
    return bool(tty) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


# -- one frame ---------------------------------------------------------------------



def _clock(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago"


def _window_age(stats: LoopStats, now: float) -> float | None:
    return now - stats.timeline[-1][0] if stats.timeline else None


def sparkline(stats: LoopStats, now: float, width: int = SPARK_WINDOWS) -> Text:
    """The loop's busy share per second over the last ``width`` seconds, newest right.

    Once the loop stopped, the seconds since are blank at the right, so that the
    line moves on with the clock. Seconds busier than :attr:`LoopStats.SATURATED`
    are red.
    """
    points = stats.timeline
    age = _window_age(stats, now)
    # the latest window ended a second after it began
    missing = min(width, int(age) - 1) if age is not None and age >= _STOPPED_AFTER else 0
    shown = points[max(0, len(points) - (width - missing)):] if width > missing else ()
    text = Text(" " * (width - missing - len(shown)))
    for _, share, _ in shown:
        bar = _BARS[min(len(_BARS) - 1, max(0, int(share * len(_BARS))))]
        text.append(bar, style="red" if share > stats.SATURATED else "green")
    text.append(" " * missing)
    return text


def _per_minute(report: Report, now: float) -> tuple[Counter[tuple[int | None, str]], bool]:
    """Blocks per loop that began in the last minute; True if those are lower bounds.

    One pass over the kept blocks (at most ``max_blocks``): a comparison each.
    """
    since = now - _MINUTE
    counts: Counter[tuple[int | None, str]] = Counter(
        (block.pid, block.loop) for block in report.blocks if block.started >= since
    )
    # older blocks were dropped (max_blocks) while the minute's were still coming
    partial = bool(report.dropped_blocks and report.blocks
                   and min(block.started for block in report.blocks) >= since)
    return counts, partial


def _header(report: Report | None, elapsed: float, note: str | None) -> Text:
    dot = Text(" · ", style="dim")
    text = Text("loopwatch live", style="bold")
    text.append_text(dot)
    text.append(_clock(elapsed))
    text.append_text(dot)
    if report is None:
        text.append("waiting for the first report", style="dim")
    else:
        # worded as the console report's first line
        count = len(report.blocks) + report.dropped_blocks
        over = f" over {duration(report.threshold)}"
        if count:
            text.append(f"{count:,} block{'s' if count != 1 else ''}{over}", style="bold")
            text.append(f", {duration(report.total_blocked)} blocked")
        else:
            text.append(f"no blocks{over}", style="bold green")
        calls = len(report.calls) + report.dropped_calls
        if calls:
            text.append_text(dot)
            text.append(f"{calls:,} blocking call{'s' if calls != 1 else ''} (strict)",
                        style="bold yellow")
        if report.stalls:
            text.append_text(dot)
            text.append(plural(len(report.stalls), "stall"), style="yellow")
    if note:
        text.append_text(dot)
        text.append(note, style="yellow")
    text.append_text(dot)
    text.append("Ctrl-C to stop", style="dim")
    return text


class _Column(NamedTuple):
    name: str
    right: bool = False
    give: str = ""
    """How the column gives way on a narrow terminal: "" it does not, "end" with an
    ellipsis at the end, "start" from the start (a path keeps its line number)."""


#: Cells of a column that gives way keep at least this many characters.
_MIN_CELL = 12
_GAP = "  "


def _fit(cell: Text, width: int, give: str) -> Text:
    if cell.cell_len <= width:
        return cell
    if give == "start":
        return Text.assemble("…", cell[len(cell) - width + 1:])
    cell = cell.copy()
    cell.truncate(width, overflow="ellipsis")
    return cell


def _grid(columns: Sequence[_Column], rows: Sequence[Sequence[Text]],
          width: int | None) -> list[Text]:
    """Rows in aligned columns under a bold header line: one Text per line.

    rich's Table measures and lays out every cell: with it a frame took about ten
    times as long (10 ms), too much four times a second in the program being watched.
    """
    widths = [max([len(column.name)] + [row[index].cell_len for row in rows])
              for index, column in enumerate(columns)]
    if width is not None:
        over = _INDENT + sum(widths) + len(_GAP) * (len(columns) - 1) - width
        # the columns on the right give way first: the ones on the left say more
        for index, column in reversed(list(enumerate(columns))):
            if over <= 0:
                break
            cut = min(over, widths[index] - _MIN_CELL) if column.give else 0
            if cut > 0:
                widths[index] -= cut
                over -= cut
    header = [Text(column.name, style="bold") for column in columns]
    lines = []
    for cells in [header, *rows]:
        # a line too long all the same is cut at the edge: wrapped, it would break the layout
        line = Text(" " * _INDENT, no_wrap=True, overflow="ellipsis")
        for index, (column, cell) in enumerate(zip(columns, cells, strict=True)):
            cell = _fit(cell, widths[index], column.give)
            pad = " " * (widths[index] - cell.cell_len)
            if index:
                line.append(_GAP)
            if column.right:
                line.append(pad)
                line.append_text(cell)
            else:
                line.append_text(cell)
                line.append(pad)
        line.rstrip()
        lines.append(line)
    return lines


def _spark_width(width: int | None) -> int:
    # the loops table's other columns take up to ~58 columns, a loop's name ~37:
    # the sparkline gives way before the name does
    if width is None:
        return SPARK_WINDOWS
    return max(10, min(SPARK_WINDOWS, width - 95))


def _optional(value: float | None) -> Text:
    return Text("-" if value is None else duration(value))


def _loops_table(report: Report, now: float, width: int | None) -> list[Text]:
    per_minute, partial = _per_minute(report, now)
    processes = len({stats.pid for stats in report.loops}) > 1
    spark = _spark_width(width)
    rows = []
    for stats in report.loops[:MAX_LOOPS]:
        age = _window_age(stats, now)
        stopped = age is not None and age >= _STOPPED_AFTER
        name = Text()
        if processes:
            name.append(f"pid {stats.pid} ", style="dim")
        name.append(stats.loop, style="bold")
        last = None if stopped else stats.last_window
        mark = Text()
        if stopped:
            mark.append("stopped", style="dim")
        elif last is not None and last > stats.SATURATED:
            mark.append("saturated", style="bold red")
        elif stats.saturated:
            # the model's flag is for any second so far: say so, next to a calm "now"
            mark.append("saturated earlier", style="red")
        count = per_minute.get((stats.pid, stats.loop), 0)
        rows.append([
            name,
            sparkline(stats, now, spark),
            Text(percent(last), style="bold red" if last and last > stats.SATURATED else ""),
            _optional(stats.lag_p99),
            _optional(stats.lag_max),
            Text(f"{count}+" if partial and count else str(count)),
            mark,
        ])
    columns = [
        _Column("loop", give="end"),
        # right-aligned: the newest second next to "now", however wide the header
        _Column(f"busy, last {spark} s" if spark >= 15 else f"busy, {spark} s", True),
        _Column("now", True),
        _Column("lag p99", True), _Column("max", True), _Column("blocks/min", True),
        _Column(""),
    ]
    return _grid(columns, rows, width)


def _blocks_table(
    report: Report, latest: Sequence[Block], now: float, width: int | None
) -> list[Text]:
    loops = len(report.loops) > 1
    processes = len({stats.pid for stats in report.loops}) > 1
    requests = any(block.request for block in latest)
    columns = [_Column("when", True), _Column("duration", True), _Column("kind"),
               _Column("line", give="start"), _Column("function", give="end")]
    if requests:
        columns.append(_Column("request", give="end"))
    columns.append(_Column("task", give="end"))
    if loops:
        columns.append(_Column("loop", give="end"))
    rows = []
    for block in latest:
        row = [
            Text(_ago(now - block.started)),
            Text(duration(block.duration), style="bold"),
            Text(block.kind, style=_KIND_STYLE.get(block.kind, "")),
            Text(short_site(block.site), style="bold"),
            Text(block.function or "?"),
        ]
        if requests:
            row.append(Text(block.request or "", style="cyan"))
        row.append(Text(block.task or ""))
        if loops:
            row.append(Text(f"pid {block.pid} {block.loop}" if processes else block.loop,
                            style="dim"))
        rows.append(row)
    return _grid(columns, rows, width)


def _sites_table(report: Report, width: int | None) -> list[Text]:
    rows = []
    startup = _startup_sites(report) if report.sites else set()
    for site in report.sites[:WORST_SITES]:
        cell = Text(short_site(site.site), style="bold")
        if site.function:
            cell.append(f" in {site.function}")
        if site.site in startup:
            cell.append(" (start-up)", style="dim")
        rows.append([Text(f"{site.count:,}"), Text(duration(site.total)),
                     Text(duration(site.max)), cell])
    columns = [_Column("count", True), _Column("total", True), _Column("max", True),
               _Column("site", give="start")]
    return _grid(columns, rows, width)


def _startup_sites(report: Report) -> set[str]:
    """Sites whose kept blocks were all start-up blocks (one pass over the kept blocks)."""
    startup: set[str] = set()
    running: set[str] = set()
    for block in report.blocks:
        (startup if block.phase == "startup" else running).add(block.site or "<unknown>")
    return startup - running


def _calls(report: Report) -> list[Text]:
    lines = []
    for call, site, function, count in report.call_sites()[:3]:
        line = Text(" " * _INDENT, no_wrap=True, overflow="ellipsis")
        line.append(f"{count:,} x {call}", style="bold")
        line.append(f"  at {short_site(site)} in {function or '?'}")
        lines.append(line)
    return lines


def _stalls(report: Report, now: float) -> list[Text]:
    """Stalls per cause (how many, the longest), then the latest one: when, how long, where."""
    line = Text(" " * _INDENT, no_wrap=True, overflow="ellipsis")
    for index, (cause, count, longest) in enumerate(report.stalls_by_cause()):
        if index:
            line.append(" · ", style="dim")
        line.append(f"{count:,} x {STALL_CAUSE_SHORT.get(cause, cause)}", style="bold")
        line.append(f", longest {duration(longest)}")
    latest = max(report.stalls, key=lambda stall: stall.started)
    last = Text(" " * _INDENT, no_wrap=True, overflow="ellipsis")
    last.append(f"latest {_ago(now - latest.started)}: ", style="dim")
    last.append(duration(latest.duration), style="bold")
    last.append(f" {STALL_CAUSE_SHORT.get(latest.cause, latest.cause)}")
    if latest.site:
        last.append(f" at {short_site(latest.site)} in {latest.function or '?'}")
    if len(report.loops) > 1:
        processes = len({stats.pid for stats in report.loops}) > 1
        loop = f"pid {latest.pid} {latest.loop}" if processes else latest.loop
        last.append(f"  {loop}", style="dim")
    return [line, last]


def _section(title: str, extra: str, lines: list[Text]) -> list[RenderableType]:
    heading = Text(title, style="bold underline")
    if extra:
        heading.append(extra, style="dim")
    return [Text(), heading, *lines]


def render_frame(
    report: Report | None,
    *,
    elapsed: float = 0.0,
    now: float | None = None,
    note: str | None = None,
    width: int | None = None,
) -> RenderableType:
    """One frame of the live view, from a report.

    ``elapsed``: seconds the view has been up (for the header); ``now``: the
    wall clock the blocks' and windows' ages are measured from (default: now);
    ``note``: a word for the header (a report that did not come); ``width``: the
    terminal's, that the columns give way to (None: as wide as they are). Costs a
    few passes over the kept blocks, a comparison each; only the rows shown are
    formatted.
    """
    when = time.time() if now is None else now
    parts: list[RenderableType] = [_header(report, elapsed, note)]
    if report is None:
        return Group(*parts)
    if report.loops:
        more = len(report.loops) - MAX_LOOPS
        parts += _section("Loops", f"  ({MAX_LOOPS} of {len(report.loops)})" if more > 0
                          else "", _loops_table(report, when, width))
    # start-up blocks (imports, a lifespan's start) are counted, not listed: they are over
    running = (block for block in report.blocks if block.phase != "startup")
    latest = heapq.nlargest(LATEST_BLOCKS, running, key=lambda block: block.started)
    if latest:
        parts += _section("Latest blocks", "", _blocks_table(report, latest, when, width))
    startup = len(report.startup_blocks)
    if startup:
        parts += _section("Start-up", "", [Text(
            f"{' ' * _INDENT}{plural(startup, 'block')} {STARTUP_MEANING}", no_wrap=True,
            overflow="ellipsis")])
    if report.stalls:
        parts += _section("Stalls", "  (not run by the machine: not your code, not blocks)",
                          _stalls(report, when))
    if report.sites:
        more = len(report.sites) - WORST_SITES
        parts += _section("Worst sites", f"  ({WORST_SITES} of {len(report.sites)})"
                          if more > 0 else "", _sites_table(report, width))
    calls = _calls(report)
    if calls:
        parts += _section("Blocking calls on a loop's thread (strict mode)", "", calls)
    return Group(*parts)


# -- the view --------------------------------------------------------------------


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class LiveView:
    """Redraw a live view from ``source()`` about ``refresh_per_second`` times a second.

    ``source`` returns a fresh :class:`Report` (or None while there is none yet).
    The view is drawn on ``console``, by default a console on stderr; when that is
    not a terminal, the view does nothing at all (:attr:`active` is False).

    Use it as a context manager; leaving it by any exception (Ctrl-C included)
    stops the drawing thread, erases the view and shows the cursor again. The
    drawing never raises into the program: when ``source()`` or the drawing
    fails, that is logged once and the view keeps the last good frame.

    While the view is up, what the program prints on the terminal (stdout,
    stderr) is shown above it, so that the two do not overwrite each other;
    a stream redirected to a file is left alone. A child the program forks
    neither draws nor erases anything, and prints as it would without the view.
    """

    def __init__(
        self,
        source: Callable[[], Report | None],
        console: Console | None = None,
        refresh_per_second: float = 4.0,
    ) -> None:
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be > 0, not {refresh_per_second!r}")
        self._source = source
        self._console = console
        self._interval = 1.0 / refresh_per_second
        self._live: Live | None = None
        self._thread: threading.Thread | None = None
        # one per drawing thread: a thread told to stop (for a fork) stays stopped
        self._stop = threading.Event()
        # held while a frame goes to the terminal: once closed, nothing more is drawn
        self._drawing = threading.Lock()
        self._closed = False
        #: (name in sys, the proxy rich put there) for stdout and stderr
        self._redirected: list[tuple[str, TextIO]] = []
        self._started = 0.0
        self._report: Report | None = None
        self._failing_since: float | None = None
        #: Frames drawn so far.
        self.frames = 0

    @property
    def active(self) -> bool:
        """True while the view is drawn (False off a terminal, and once it ended)."""
        return self._live is not None

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start drawing (nothing happens off a terminal)."""
        if self._live is not None or self._closed:
            return
        console = self._console
        if console is None:
            if not live_available(sys.stderr):
                return
            # bound to today's stderr: a program that swaps sys.stderr for a
            # buffer later must not get the frames in it
            console = Console(file=sys.stderr)
        # a terminal that can move its cursor, and that was not told to keep still
        # (TTY_INTERACTIVE=0)
        if not console.is_interactive:
            return
        live = Live(
            console=console,
            auto_refresh=False,  # our own thread draws: source() runs outside rich's lock
            transient=True,
            redirect_stdout=_is_terminal(sys.stdout),
            redirect_stderr=_is_terminal(sys.stderr),
            vertical_overflow="ellipsis",
        )
        before = {name: getattr(sys, name) for name in ("stdout", "stderr")}
        try:
            live.start()
        except Exception:
            log_once(f"live start {id(self)}", "loopwatch could not start its live view")
            try:
                live.stop()  # puts stdout and stderr back, shows the cursor
            except Exception:
                pass
            return
        self._redirected = [(name, getattr(sys, name)) for name in before
                            if getattr(sys, name) is not before[name]]
        _watch_forks()
        self._started = time.monotonic()
        self._live = live
        _VIEWS.add(self)
        self._start_thread()

    def stop(self) -> None:
        """Stop drawing and erase the view; safe to call more than once."""
        live = self._live
        if live is None:
            return
        self._live = None
        _VIEWS.discard(self)
        self._stop.set()
        with self._drawing:
            self._closed = True
        try:
            live.stop()
        except Exception:
            log_once(f"live stop {id(self)}", "loopwatch could not end its live view cleanly")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        forget_owner(self)

    # -- the drawing thread ---------------------------------------------------------

    def _start_thread(self) -> None:
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stop,), name="loopwatch-live",
                                        daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self._draw()
                stop.wait(self._interval)
        except Exception:  # the view goes quiet; the program must not notice
            log_once(f"live thread {id(self)}", "loopwatch's live view stopped drawing")

    def _draw(self) -> None:
        live = self._live
        if live is None:
            return
        try:
            report = self._source()
        except Exception:
            log_once(f"live source {id(self)}",
                     "loopwatch's live view could not get a report; it shows the last one")
            if self._failing_since is None:
                self._failing_since = time.monotonic()
        else:
            self._failing_since = None
            if report is not None:
                self._report = report
        now = time.monotonic()
        note = None
        if self._failing_since is not None:
            note = f"no fresh report for {now - self._failing_since:.0f} s"
        console = live.console
        try:
            frame = render_frame(self._report, elapsed=now - self._started, note=note,
                                 width=console.width)
            # laid out here, so that the terminal only gets finished lines: redrawing
            # them (when the program prints above the view) cannot fail in its thread
            lines = console.render_lines(frame, console.options, pad=False)
        except Exception:
            log_once(f"live render {id(self)}",
                     "loopwatch's live view could not draw a report; it keeps the last frame")
            return
        self._show(live, lines)

    def _show(self, live: Live, lines: list[list[Segment]]) -> None:
        with self._drawing:
            if self._closed:
                return
            try:
                live.update(SegmentLines(lines, new_lines=True), refresh=True)
            except Exception:
                log_once(f"live draw {id(self)}", "loopwatch's live view could not draw")
                return
            self.frames += 1

    # -- fork -------------------------------------------------------------------------

    def _pause_for_fork(self) -> None:
        # loopwatch's threads end before a fork and start again after it in the parent
        # (see loopwatch._core.forking); the frame being drawn is finished first
        if self._live is not None:
            self._stop.set()
            join_for_fork(self._thread)

    def _resume_after_fork(self) -> None:
        if self._live is not None and self._stop.is_set():
            self._start_thread()

    def _forget_after_fork(self) -> None:
        """In the child: the screen and the view are the parent's; its prints go straight out.

        rich's proxies would send them through the console, whose lock the parent's
        drawing thread may have held at the fork.
        """
        self._live = None
        self._thread = None
        self._closed = True
        self._drawing = threading.Lock()
        for name, proxy in self._redirected:
            if getattr(sys, name) is proxy:
                setattr(sys, name, getattr(proxy, "rich_proxied_file", proxy))


#: Views being drawn, for the fork hooks.
_VIEWS: weakref.WeakSet[LiveView] = weakref.WeakSet()
_fork_hooks = threading.Lock()
_fork_watched = False


def _watch_forks() -> None:
    # Registered on the first view, after the watchdog's hooks (the source is a
    # session's report): before a fork hooks run in the reverse order, so the drawing
    # thread has ended before the watchdog holds its lock, which a report may wait for.
    global _fork_watched
    with _fork_hooks:
        if _fork_watched or not hasattr(os, "register_at_fork"):
            return
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)
        _fork_watched = True


def _before_fork() -> None:
    for view in list(_VIEWS):
        view._pause_for_fork()


def _after_fork_in_parent() -> None:
    for view in list(_VIEWS):
        view._resume_after_fork()


def _after_fork_in_child() -> None:
    for view in list(_VIEWS):
        view._forget_after_fork()
    _VIEWS.clear()
