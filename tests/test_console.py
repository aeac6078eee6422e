"""The console report: what a person reads, from real sessions and from hand-built reports."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import loopwatch
from loopwatch.console import (
    block_line,
    print_report,
    print_summary,
    render,
    render_summary,
    short_path,
)
from loopwatch.model import Block, Frame, FunctionStat, LoopStats, Report, Site, Stack, advise

ANSI = re.compile(r"\x1b\[")


def blocking_step() -> None:
    time.sleep(0.08)  # the blocking line


SLEEP_LINE = inspect.getsourcelines(blocking_step)[1] + 1


async def service() -> None:
    await asyncio.sleep(0)
    blocking_step()
    await asyncio.sleep(0)


@pytest.fixture(scope="module")
def report() -> Report:
    """A real report: one 80 ms sleep at a 50 ms threshold."""
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(service())
    result = session.report()
    assert len(result.blocks) == 1, result
    return result


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


# -- a real session ---------------------------------------------------------------


def test_summary_line_counts_blocks_and_total(report: Report) -> None:
    """The first line says how many blocks, over which threshold, and the time lost."""
    first = lines_of(render(report, color=False))[0]
    assert re.fullmatch(r"loopwatch: 1 block over 50\.0 ms, \d+\.\d ms blocked in total.*", first)


def test_block_shows_the_source_with_the_blocking_line_highlighted(report: Report) -> None:
    """The block's source is shown with two lines of context and a marker on its line."""
    lines = lines_of(render(report, color=False))
    (marked,) = [line for line in lines if "time.sleep(0.08)" in line]
    assert re.match(rf"^\s*❱ {SLEEP_LINE} ", marked), marked
    numbers = [int(m[1]) for line in lines if (m := re.match(r"^\s+(\d+) ", line))]
    assert SLEEP_LINE - 1 in numbers  # the def line above it
    assert f"{short_path(__file__)}:{SLEEP_LINE} in blocking_step" in "\n".join(lines)


def test_block_header_names_kind_cpu_and_task(report: Report) -> None:
    """The header gives duration, waiting vs computing with the CPU share, and the task."""
    # wide enough for the header on one line, "not run by the machine" (a busy one) and all
    text = render(report, color=False, width=200)
    header = next(line for line in lines_of(text) if line.startswith("#1"))
    assert re.match(r"#1\s+\d+\.\d ms\s+waiting \(CPU \d+%", header), header
    assert "task Task-" in header and "service()" in header
    assert 'offload("thread")' in text


def test_stack_keeps_user_frames_and_drops_the_loop_machinery(report: Report) -> None:
    """The stack starts at the task's coroutine: no asyncio.run or _run_once frames."""
    text = render(report, color=False)
    assert f"{short_path(__file__)}:{SLEEP_LINE - 0}" in text
    assert "service" in text
    assert "_run_once" not in text and "run_until_complete" not in text


def test_sites_table_lists_the_site(report: Report) -> None:
    """The sites table has a row with count, times, CPU share and the site with its advice."""
    lines = lines_of(render(report, color=False))
    start = lines.index("Sites")
    header = lines[start + 1].split()
    assert header == ["count", "total", "p95", "max", "CPU", "site"]
    row = lines[start + 2]
    assert re.match(r"^\s+1\s+\d+\.\d ms\s+\d+\.\d ms\s+\d+\.\d ms\s+\d+%\s+\S+:\d+ in "
                    r"blocking_step$", row), row
    assert "→ waiting" in lines[start + 3]


def test_plain_text_has_no_escape_codes_and_color_has_them(report: Report) -> None:
    """color=False is plain text; color=True styles it with ANSI codes."""
    assert not ANSI.search(render(report, color=False))
    assert ANSI.search(render(report, color=True))


def test_no_color_and_non_terminals_get_plain_text(
    report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_COLOR, or an output that is not a terminal, gives plain text."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not ANSI.search(render(report))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    print_report(report, file=out)
    assert not ANSI.search(out.getvalue())
    monkeypatch.delenv("NO_COLOR")
    out = Terminal()
    print_report(report, file=out)
    assert ANSI.search(out.getvalue())
    out = io.StringIO()
    print_report(report, file=out)
    assert not ANSI.search(out.getvalue())
    assert out.getvalue().startswith("loopwatch: 1 block over")


def test_lines_fit_the_width(report: Report) -> None:
    """No line is wider than asked, and none ends in blanks."""
    for width in (60, 100):
        for line in render(report, color=False, width=width).splitlines():
            assert len(line) <= width, line
            assert line == line.rstrip()


def test_plain_summary_functions_still_work(report: Report) -> None:
    """render_summary, print_summary and block_line keep their names and output."""
    assert render_summary(report).startswith("loopwatch: 1 block(s) over 50.0 ms")
    assert "in blocking_step" in block_line(report.blocks[0])
    out = io.StringIO()
    print_summary(report, file=out)
    assert out.getvalue() == render_summary(report) + "\n"


# -- hand-built reports: fields the core may not fill ----------------------------------

APP = str(Path(__file__).parent / "data" / "console_app.py")
LOOP = (Frame("/usr/lib/python3/asyncio/base_events.py", 1922, "_run_once"),
        Frame("/usr/lib/python3/asyncio/events.py", 80, "_run"))
LIB = "/usr/lib/python3/site-packages/driver/core.py"


def block(**changes: object) -> Block:
    frames = (*LOOP, Frame(APP, 11, "handle"), Frame(APP, 6, "build_index"),
              Frame(LIB, 40, "execute"), Frame(LIB, 90, "_send"))
    fields: dict[str, object] = dict(
        id=1, loop="_UnixSelectorEventLoop#1 (MainThread)", started=0.0, duration=0.4,
        cpu_ratio=0.97, kind="cpu", frames=frames, site=f"{APP}:6", function="build_index",
        task="checkout", coroutine="handle", samples=20, stacks=(Stack(frames, 20),),
        advice=advise("cpu", gil_held=0.99), gil_held=0.99,
    )
    fields.update(changes)
    return Block(**fields)  # type: ignore[arg-type]


def site(**changes: object) -> Site:
    fields: dict[str, object] = dict(
        site=f"{APP}:6", function="build_index", count=3, total=1.2, max=0.4, p95=0.4,
        cpu_ratio=0.97, kind="cpu", advice=advise("cpu"), gil_held=0.99, blocks=3,
    )
    fields.update(changes)
    return Site(**fields)  # type: ignore[arg-type]


def test_gil_and_gc_share_are_shown() -> None:
    """GIL held or released, and a notable GC share, are in the block's header."""
    held = render(Report(0.1, blocks=(block(gc_time=0.08),)), color=False)
    assert "GIL held 99%" in held and "GC 80.0 ms" in held
    released = render(Report(0.1, blocks=(block(gil_held=0.02, gc_time=0.001),)), color=False)
    assert "GIL released" in released and "GC " not in released


def test_a_gc_pause_is_not_blamed_on_the_line() -> None:
    """A block mostly in the garbage collector says so instead of showing the line's source."""
    gc_block = block(gc_time=0.3, advice=advise("cpu", mostly_gc=True))
    text = render(Report(0.1, blocks=(gc_block,)), color=False)
    assert "mostly a GC pause: 300 ms of 400 ms in the garbage collector" in text
    assert "index.setdefault" not in text  # no source for an innocent line
    assert "garbage-collection pause" in text  # the model's advice


def test_library_frames_are_folded_and_inner_ones_kept() -> None:
    """Library frames the user's line called are listed below it, dimmed; the loop's are not."""
    lines = lines_of(render(Report(0.1, blocks=(block(),)), color=False))
    stack = [line.strip() for line in lines
             if re.search(r"console_app\.py:\d+ in|driver/|…", line) and not line.startswith("#")]
    stack = stack[1:]  # the first is the block's "where" line
    assert stack[0].endswith("console_app.py:11 in handle")
    assert stack[1].startswith("❱ ") and stack[1].endswith("console_app.py:6 in build_index")
    assert stack[2:] == ["driver/core.py:40 in execute", "driver/core.py:90 in _send"]
    assert not any("base_events" in line for line in lines)


def test_source_lines_come_from_the_file() -> None:
    """The block's line and its neighbours are read from the source file."""
    lines = lines_of(render(Report(0.1, blocks=(block(),)), color=False))
    (marked,) = [line for line in lines if "❱ 6 " in line]
    assert "index.setdefault" in marked
    assert any(re.match(r"^\s+4 ", line) for line in lines)
    assert any(re.match(r"^\s+8 ", line) for line in lines)


def test_a_missing_source_file_is_skipped() -> None:
    """A report read on another machine, without the source, still renders its stack."""
    gone = Frame("/nowhere/app.py", 3, "handler")
    text = render(Report(0.1, blocks=(block(frames=(*LOOP, gone), site="/nowhere/app.py:3",
                                            function="handler", stacks=()),)), color=False)
    assert "/nowhere/app.py:3 in handler" in text
    assert "❱ 3" not in text


def test_who_was_running_is_named() -> None:
    """Task and coroutine, or the callback, are named."""
    text = render(Report(0.1, blocks=(block(task=None, coroutine=None,
                                            callback="<TimerHandle reload()>"),)), color=False)
    assert "callback <TimerHandle reload()>" in text


def test_blocks_without_a_stack_or_with_a_heartbeat_say_so() -> None:
    """No stack, a faulthandler stack, and heartbeat resolution are each explained."""
    none = block(id=2, frames=(), site=None, function=None, stacks=(), source="none",
                 resolution="heartbeat", cpu_ratio=None, kind="unknown", gil_held=None)
    dumped = block(source="deadman")
    text = render(Report(0.1, blocks=(none, dumped)), color=False)
    assert "no stack captured" in text
    assert "± heartbeat" in text
    assert "faulthandler" in text


def test_thousand_cuts_rows_are_marked() -> None:
    """Sites whose count is mostly below the threshold are marked as thousand cuts."""
    cuts = site(site=f"{APP}:11", function="handle", count=412, total=0.84, max=0.011,
                p95=0.004, kind="wait", cpu_ratio=0.05, advice=advise("wait"), blocks=0)
    lines = lines_of(render(Report(0.1, blocks=(block(),), sites=(site(), cuts)), color=False))
    row = lines.index(next(line for line in lines if line.lstrip().startswith("412 ")))
    assert "thousand cuts: 412 short blocks, none over 100 ms" in lines[row + 1]
    marked = [line for line in lines if "thousand cuts" in line]
    assert len(marked) == 1


def test_a_single_slow_iteration_is_not_called_a_thousand_cuts() -> None:
    one = site(site=f"{APP}:11", function="handle", count=1, total=0.04, max=0.04,
               p95=0.04, kind="cpu", cpu_ratio=1.0, advice=advise("cpu"), blocks=0)
    text = render(Report(0.1, blocks=(block(),), sites=(site(), one)), color=False)
    assert "thousand cuts" not in text
    assert "1 slow iteration under 100 ms" in text


def test_saturation_and_lag_are_reported_with_a_warning() -> None:
    """Busy share, worst window and lag percentiles are shown; a saturated loop is flagged."""
    busy = LoopStats("_UnixSelectorEventLoop#1 (MainThread)", 52_000, 3.1, 8.0, 2,
                     busy_fraction_sampled=0.39, worst_window=0.62, lag_p50=0.0004,
                     lag_p95=0.02, lag_p99=0.09, lag_max=0.41)
    calm = LoopStats("uvloop.Loop#2 (worker)", None, 0.0, 8.0, 0, resolution="heartbeat",
                     busy_fraction_sampled=0.05, worst_window=0.12)
    text = render(Report(0.1, loops=(busy, calm)), color=False)
    assert "busiest loop 62% busy (saturated)" in lines_of(text)[0]
    assert "busy 39%, worst 1 s window 62%, lag p50 0.4 ms, p99 90.0 ms, max 410 ms" in text
    assert text.count("busier than 30%") == 1
    assert "heartbeat resolution" in text


def test_loops_without_busy_time_do_not_claim_to_be_idle() -> None:
    """A loop whose busy time was not measured shows no busy share at all."""
    unmeasured = LoopStats("loop#1", None, 0.0, 2.0, 1)
    text = render(Report(0.1, loops=(unmeasured,)), color=False)
    assert "busy" not in text and "loop#1: 1 block in 2.0 s watched" in text


def test_profile_functions_are_tabled() -> None:
    """Profile mode's functions appear in a table by own time, and per block."""
    functions = (FunctionStat("JSONDecoder.raw_decode", "/x/json/decoder.py", 343, 0.21, 0.21, 1),
                 FunctionStat("loads", "/x/json/__init__.py", 299, 0.0, 0.21, 1),
                 FunctionStat("re.Pattern.match", "builtins", 0, 0.004, 0.004, 1200))
    text = render(Report(0.1, blocks=(block(functions=functions),), functions=functions),
                  color=False)
    lines = lines_of(text)
    start = lines.index("Functions (profile mode, by own time)")
    assert lines[start + 1].split() == ["function", "own", "total", "calls", "where"]
    assert lines[start + 2].split()[:3] == ["JSONDecoder.raw_decode", "210", "ms"]
    assert "1,200" in lines[start + 4] and "builtins" in lines[start + 4]
    assert "profile: JSONDecoder.raw_decode 210 ms, re.Pattern.match 4.0 ms" in text


def test_events_and_dropped_blocks_become_notes() -> None:
    """Report events and dropped blocks are listed as notes at the end."""
    text = render(Report(0.1, blocks=(block(),), dropped_blocks=4,
                         events=("deadman switch off: faulthandler is in use",)), color=False)
    assert lines_of(text)[-2:] == [
        "note: deadman switch off: faulthandler is in use",
        "note: 4 older block(s) were not kept (max_blocks); the sites table still counts them",
    ]
    assert lines_of(text)[0].startswith("loopwatch: 5 blocks over 100 ms")


def test_limit_shows_the_worst_blocks_first() -> None:
    """Only the `limit` longest blocks are shown in full, longest first."""
    blocks = tuple(block(id=i, duration=0.1 + i / 100) for i in range(7))
    lines = lines_of(render(Report(0.1, blocks=blocks), color=False, limit=2))
    assert "Worst blocks (2 of 7)" in lines
    headers = [line for line in lines if line.startswith("#")]
    assert [h.split()[1] for h in headers] == ["160", "150"]


def test_an_empty_report_is_one_line() -> None:
    """Nothing found: one line saying so."""
    assert render(Report(threshold=0.05), color=False) == "loopwatch: no blocks over 50.0 ms"


def test_cli_report_re_renders_a_saved_report(tmp_path: Path) -> None:
    """`loopwatch report OUT.json` prints the full report of a saved JSON file."""
    saved = Report(0.1, blocks=(block(),), sites=(site(),),
                   loops=(LoopStats("loop#1", 10, 0.5, 1.0, 1, worst_window=0.5),))
    (tmp_path / "out.json").write_text(json.dumps(saved.to_dict()))
    result = subprocess.run([sys.executable, "-m", "loopwatch", "report", "out.json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not ANSI.search(out)
    assert out.startswith("loopwatch: 1 block over 100 ms, 1.20 s blocked in total")
    assert re.search(r"❱ 6 +index\.setdefault", out)
    assert "Sites" in out and "Loops" in out and "busier than 30%" in out
