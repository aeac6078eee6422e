"""Rendering a Report for people. Renderers only format: every number comes from the model.

Two renderers share this module:

- :func:`render` / :func:`print_report`: the full console report (rich): a
  summary line, the worst blocks with their source lines and stacks, the sites
  table, loop saturation, profile-mode functions and notes.
- :func:`render_summary` / :func:`print_summary`: one plain line per block, for
  logs and the pytest plugin.

>>> from loopwatch.model import Report
>>> print(render(Report(threshold=0.05), color=False))
loopwatch: no blocks over 50.0 ms
"""

from __future__ import annotations

import io
import linecache
import os
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from loopwatch._format import (
    KIND_LABEL,
    block_facts,
    block_who,
    duration,
    milliseconds,
    percent,
    plural,
    report_notes,
    short_path,
    short_site,
    stall_lines,
)
from loopwatch._stackview import Folded, stack_view
from loopwatch.model import Block, FunctionStat, LoopStats, Report
from loopwatch.stacks import UserCode

#: Width of the report when the output is not a terminal (files, CI logs, pipes).
DEFAULT_WIDTH = 100


#: Lines of source shown above and below a block's line.
_CONTEXT = 2

_INDENT = 4

_TRAILING_BLANKS = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def _ms(seconds: float) -> str:
    return milliseconds(seconds, 1)


def block_line(block: Block) -> str:
    """One line for one block: duration, kind, where, function, task."""
    ratio = f" cpu {block.cpu_ratio:.0%}" if block.cpu_ratio is not None else ""
    where = short_site(block.site)
    task = f"  task {block.task}" if block.task else ""
    if block.request:
        task = f"  {block.request}{task}"
    return (
        f"{_ms(block.duration):>11}  {block.kind:<5}{ratio:>9}  {where}  "
        f"in {block.function or '?'}{task}"
    )


def render_summary(report: Report, limit: int = 20) -> str:
    """A short plain-text summary: one line per block, worst first."""
    count = len(report.blocks) + report.dropped_blocks
    threshold = _ms(report.threshold)
    if not count:
        lines = [f"loopwatch: no blocks over {threshold}"]
    else:
        lines = [
            f"loopwatch: {count} block(s) over {threshold}, "
            f"{_ms(report.total_blocked)} blocked in total"
        ]
        lines += ["  " + block_line(b) for b in report.worst(limit)]
        if count > limit:
            lines.append(f"  ... and {count - limit} more")
    lines += [f"  stalls: {line}" for line in stall_lines(report)]
    lines += [f"  note: {event}" for event in report.events]
    return "\n".join(lines)


def print_summary(report: Report, file: TextIO | None = None) -> None:
    out = file if file is not None else sys.stderr
    print(render_summary(report), file=out, flush=True)


# -- the rich report ------------------------------------------------------------

_KIND_STYLE = {"cpu": "bold red", "wait": "bold yellow", "mixed": "bold magenta",
               "gc": "bold blue"}




def _summary(report: Report) -> Text:
    count = len(report.blocks) + report.dropped_blocks
    text = Text("loopwatch: ", style="bold")
    if count:
        text.append(f"{plural(count, 'block')} over {duration(report.threshold)}", style="bold")
        text.append(f", {duration(report.total_blocked)} blocked in total")
    else:
        text.append(f"no blocks over {duration(report.threshold)}", style="bold green")
    worst = report.busiest_loop
    if worst is not None:
        share = worst.worst_window if worst.worst_window is not None else worst.busy_fraction
        text.append(", busiest loop ")
        text.append(f"{percent(share)} busy", style="bold red" if worst.saturated else "")
        if worst.saturated:
            text.append(" (saturated)", style="bold red")
    return text


# -- one block ----------------------------------------------------------------------




def _block_header(number: int, block: Block) -> Text:
    text = Text()
    text.append(f"#{number}  ", style="bold")
    text.append(duration(block.duration), style="bold")
    if block.resolution == "heartbeat":
        text.append(" (± heartbeat)", style="dim")
    text.append("  ")
    text.append(KIND_LABEL.get(block.kind, "unknown"), style=_KIND_STYLE.get(block.kind, "bold"))
    facts = block_facts(block)
    if facts:
        text.append(" (" + ", ".join(facts) + ")")
    who = block_who(block)
    if who:
        text.append("  " + ", ".join(who), style="cyan")
    return text


def _where(block: Block) -> Text:
    text = Text()
    if block.kind == "gc":
        text.append(block.function or "garbage collection", style="bold")
        text.append(f": {duration(block.gc_time)} of {duration(block.duration)} in the garbage "
                    "collector, which runs at whatever line allocates next")
        if block.gc_trigger:
            text.append(f" (triggered at {short_site(block.gc_trigger)})", style="dim")
        return text
    if block.mostly_gc:
        text.append("mostly a GC pause", style="bold")
        text.append(f": {duration(block.gc_time)} of {duration(block.duration)} in the garbage "
                    "collector, which runs at whatever line allocates next")
        if block.site:
            text.append(f" (here {short_site(block.site)})", style="dim")
        return text
    if not block.site:
        text.append("no stack captured", style="bold")
        if block.source == "none":
            text.append(": the watchdog could not look at the loop while it was blocked",
                        style="dim")
        return text
    text.append(short_site(block.site), style="bold")
    text.append(f" in {block.function or '?'}")
    if block.source == "deadman":
        text.append("  (stack dumped by faulthandler during a C call)", style="dim")
    return text


def _source(block: Block, width: int) -> RenderableType | None:
    frame = block.user_frame
    if frame is None or frame.line <= 0 or block.mostly_gc:
        return None
    first = max(1, frame.line - _CONTEXT)
    lines = [linecache.getline(frame.file, n) for n in range(first, frame.line + _CONTEXT + 1)]
    if not lines[frame.line - first].strip():
        return None  # the file is gone, or changed since the report was made
    while not lines[-1].strip():
        lines.pop()
    while not lines[0].strip():
        lines.pop(0)
        first += 1
    syntax = Syntax(
        "".join(lines).rstrip("\n"), "python", line_numbers=True, start_line=first,
        highlight_lines={frame.line}, theme="ansi_dark", background_color="default",
        dedent=True, word_wrap=False, code_width=max(20, width - 12),
    )
    return syntax


def _stack(block: Block, is_user: UserCode, limit_inner: int = 3) -> Text | None:
    """The stack of the callback the loop was running, down to the block.

    Laid out by :mod:`loopwatch._stackview`: runs of library frames above the
    user's line fold into one dim line; up to ``limit_inner`` library frames
    below it (what it called) are kept. Nothing is shown when the stack is just
    the block's own line.
    """
    view = stack_view(block, is_user, limit_inner)
    if view is None or view.just_the_site:
        return None
    text = Text()
    for item in view.items:
        if isinstance(item, Folded):
            text.append(f"  … {plural(len(item.frames), 'library frame')} "
                        f"({', '.join(item.modules)})\n", style="dim")
        elif item.site:
            frame = item.frame
            text.append("❱ ", style="bold red")
            text.append(f"{short_path(frame.file)}:{frame.line} in {frame.function}\n",
                        style="bold")
        else:
            frame = item.frame
            text.append(f"  {short_path(frame.file)}:{frame.line} in {frame.function}\n",
                        style="" if item.user else "dim")
    text.rstrip()
    return text


def _other_stacks(block: Block) -> Text | None:
    if len(block.stacks) <= 1:
        return None
    main = max(block.stacks, key=lambda s: s.count)
    total = sum(s.count for s in block.stacks)
    return Text(
        f"+ {plural(len(block.stacks) - 1, 'other stack')} in {total - main.count} "
        f"of {total} samples (a speedscope export shows them all)",
        style="dim",
    )


def _functions_line(functions: Sequence[FunctionStat], limit: int = 4) -> Text | None:
    # functions that only passed the time on to others are in the stack already
    heavy = [f for f in functions if f.own >= 0.0005][:limit]
    if not heavy:
        return None
    text = Text("profile: ", style="dim")
    for index, stat in enumerate(heavy):
        if index:
            text.append(", ", style="dim")
        text.append(stat.name)
        text.append(f" {duration(stat.own)}", style="dim")
    return text


def _advice(block: Block) -> Text | None:
    if not block.advice:
        return None
    return Text(f"→ {block.advice}", style="green")


def _block(number: int, block: Block, width: int, is_user: UserCode) -> RenderableType:
    parts: list[RenderableType | None] = [
        _where(block),
        _source(block, width),
        _stack(block, is_user),
        _other_stacks(block),
        _functions_line(block.functions),
        _advice(block),
    ]
    body = Group(*(p for p in parts if p is not None))
    return Group(_block_header(number, block), Padding(body, (0, 0, 0, _INDENT)))


# -- tables ---------------------------------------------------------------------------


#: Short blocks at one site from which it reads as "a thousand cuts".
_MANY_CUTS = 3


def _sites_table(report: Report, limit: int) -> RenderableType:
    cuts_known = report.cuts_known
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold",
                  padding=(0, 1))
    for name in ("count", "total", "p95", "max", "CPU"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("site", overflow="fold", ratio=1)
    for site in report.sites[:limit]:
        cell = Text()
        cell.append(short_site(site.site), style="bold")
        if site.function:
            cell.append(f" in {site.function}")
        short = site.count - site.blocks
        if cuts_known and short >= _MANY_CUTS:
            over = f"{site.blocks} over" if site.blocks else "none over"
            cell.append(f"\nthousand cuts: {short} short blocks, {over} "
                        f"{duration(report.threshold)}", style="yellow")
        elif cuts_known and short:
            iterations = "iteration" if short == 1 else "iterations"
            cell.append(f"\n{short} slow {iterations} under {duration(report.threshold)}",
                        style="yellow")
        if site.requests:
            cell.append("\nfor " + ", ".join(site.requests), style="cyan")
        if site.advice:
            cell.append(f"\n→ {site.advice}", style="green")
        table.add_row(
            str(site.count), duration(site.total), duration(site.p95), duration(site.max),
            Text(percent(site.cpu_ratio), style=_KIND_STYLE.get(site.kind, "")), cell,
        )
    return table


def _loops(report: Report) -> list[RenderableType]:
    out: list[RenderableType] = []
    groups = report.loops_by_process()
    for pid, loops in groups:
        if len(groups) > 1:
            out.append(Text(f"process {pid}" if pid is not None else "process ?", style="bold"))
        out.extend(_loop(stats) for stats in loops)
    return out


def _loop(stats: LoopStats) -> RenderableType:
    head = Text()
    head.append(stats.loop, style="bold")
    head.append(f": {plural(stats.blocks, 'block')} in {stats.watched:,.1f} s watched")
    if stats.resolution == "heartbeat":
        head.append(" (heartbeat resolution)", style="dim")
    facts = Text()
    if stats.busy_measured:
        facts.append(f"busy {percent(stats.busy_fraction)}")
    if stats.worst_window is not None:
        facts.append(", worst 1 s window " if facts else "worst 1 s window ")
        facts.append(percent(stats.worst_window), style="bold red" if stats.saturated else "")
    lags = [f"{name} {duration(value)}" for name, value in
            (("p50", stats.lag_p50), ("p99", stats.lag_p99), ("max", stats.lag_max))
            if value is not None]
    if lags:
        facts.append((", lag " if facts else "lag ") + ", ".join(lags))
    lines: list[RenderableType] = [head]
    if facts:
        lines.append(Padding(facts, (0, 0, 0, _INDENT)))
    if stats.saturated and stats.busy_measured:
        lines.append(Padding(Text(
            f"! busier than {stats.SATURATED:.0%} in some second: past that, latency climbs "
            "fast. Move work off the loop, or spread it over more processes.",
            style="bold red",
        ), (0, 0, 0, _INDENT)))
    return Padding(Group(*lines), (0, 0, 0, 2))


def _functions_table(functions: Sequence[FunctionStat], limit: int) -> RenderableType:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    table.add_column("function", overflow="fold", ratio=2)
    table.add_column("own", justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("calls", justify="right", no_wrap=True)
    table.add_column("where", overflow="fold", ratio=2, style="dim")
    for stat in functions[:limit]:
        where = short_path(stat.file) + (f":{stat.line}" if stat.line > 0 else "")
        table.add_row(Text(stat.name, style="bold"), duration(stat.own), duration(stat.total),
                      f"{stat.calls:,}", where)
    return table


def _heading(title: str) -> Text:
    return Text(title, style="bold underline")


def _report(report: Report, width: int, limit: int) -> list[RenderableType]:
    parts: list[RenderableType] = [_summary(report)]
    parts += [Text(f"stalls: {line}", style="yellow") for line in stall_lines(report)]
    worst = report.worst(limit)
    if worst:
        is_user = UserCode()
        count = len(report.blocks) + report.dropped_blocks
        title = "Worst blocks" if count > len(worst) else "Blocks"
        extra = f" ({len(worst)} of {count})" if count > len(worst) else ""
        parts += [Text(), _heading(title + extra)]
        for number, block in enumerate(worst, 1):
            if number > 1:
                parts.append(Text())
            parts.append(_block(number, block, width, is_user))
    startup = report.startup_blocks
    if startup:
        parts += [Text(), _heading(f"Start-up ({plural(len(startup), 'block')} before the loop "
                                   "served anything: imports, a lifespan's start)")]
        parts += [Text("  " + block_line(b)) for b in startup[:limit]]
        if len(startup) > limit:
            parts.append(Text(f"  ... and {len(startup) - limit} more", style="dim"))
    if report.sites:
        more = len(report.sites) - limit * 2
        parts += [Text(), _heading("Sites"), Padding(_sites_table(report, limit * 2), (0, 0, 0, 2))]
        if more > 0:
            parts.append(Text(f"  ... and {more} more", style="dim"))
    calls = report.call_sites()
    if calls:
        parts += [Text(), _heading("Blocking calls on a loop's thread (strict mode)")]
        for call, site, function, count in calls[: limit * 2]:
            line = Text("  ")
            line.append(f"{count} x {call}", style="bold")
            line.append(f"  at {short_site(site)} in {function or '?'}")
            parts.append(line)
        if len(calls) > limit * 2:
            parts.append(Text(f"  ... and {len(calls) - limit * 2} more", style="dim"))
    loops = _loops(report)
    if loops:
        parts += [Text(), _heading("Loops"), *loops]
    if report.functions:
        parts += [Text(), _heading("Functions (profile mode, by own time)"),
                  Padding(_functions_table(report.functions, limit * 2), (0, 0, 0, 2))]
    notes = report_notes(report)
    if notes:
        parts += [Text(), *(Text(f"note: {note}", style="dim") for note in notes)]
    return parts


def _wants_color(stream: TextIO | None) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def _terminal_width(stream: TextIO | None) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def render(
    report: Report, *, color: bool | None = None, width: int | None = None, limit: int = 5
) -> str:
    """The full console report as a string.

    ``color``: ``True`` for ANSI styles, ``False`` for plain text, ``None`` to
    decide as :func:`print_report` does for stderr (plain when it is not a
    terminal or when ``NO_COLOR`` is set). ``width`` defaults to 100 columns.
    ``limit`` is how many of the worst blocks are shown in full (the sites and
    functions tables show twice as many rows).

    >>> import asyncio, time, loopwatch
    >>> async def main():
    ...     time.sleep(0.08)
    >>> with loopwatch.watch(threshold=0.05) as session:
    ...     asyncio.run(main())
    >>> print(render(session.report(), color=False))  # doctest: +ELLIPSIS
    loopwatch: 1 block over 50.0 ms, 80... ms blocked in total...
    """
    if color is None:
        color = _wants_color(sys.stderr)
    width = width or DEFAULT_WIDTH
    out = io.StringIO()
    console = Console(
        file=out, width=width, force_terminal=color, no_color=False, color_system="standard"
        if color else None, highlight=False, markup=False, emoji=False, soft_wrap=False,
        force_jupyter=False, force_interactive=False,
    )
    for part in _report(report, width, limit):
        console.print(part)
    # rich pads tables and code to the full width: trailing blanks only get in the way
    lines = (_TRAILING_BLANKS.sub(r"\1", line) for line in out.getvalue().split("\n"))
    return "\n".join(lines).rstrip("\n")


def print_report(
    report: Report,
    file: TextIO | None = None,
    *,
    color: bool | None = None,
    width: int | None = None,
    limit: int = 5,
) -> None:
    """Print the full console report (to stderr by default).

    Colors when ``file`` is a terminal and ``NO_COLOR`` is not set; uses the
    terminal's width there, 100 columns elsewhere.

    >>> from loopwatch.model import Report
    >>> print_report(Report(threshold=0.1), file=sys.stdout)
    loopwatch: no blocks over 100 ms
    """
    out = file if file is not None else sys.stderr
    if color is None:
        color = _wants_color(out)
    if width is None:
        width = min(_terminal_width(out) or DEFAULT_WIDTH, 140)
    print(render(report, color=color, width=width, limit=limit), file=out, flush=True)

