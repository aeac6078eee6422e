"""The HTML report: a real session's page, escaping, no network, and what a browser makes of it."""

from __future__ import annotations

import asyncio
import doctest
import gc
import html
import importlib
import inspect
import json
import linecache
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import loopwatch
import loopwatch.html_report
from loopwatch._format import short_site, stall_lines
from loopwatch.html_report import render_html, write_html
from loopwatch.model import (
    Block,
    BlockingCall,
    Frame,
    FunctionStat,
    Kind,
    LoopStats,
    Report,
    Site,
    Stack,
    Stall,
)


def sleeping_step() -> None:
    time.sleep(0.1)  # the waiting line


def computing_step() -> int:
    deadline = time.thread_time() + 0.1  # CPU time: on a busy machine wall time is longer
    spins = 0
    while time.thread_time() < deadline:
        spins += 1
    return spins


SLEEP_LINE = inspect.getsourcelines(sleeping_step)[1] + 1
_COMPUTE_FIRST = inspect.getsourcelines(computing_step)[1]
COMPUTE_LINES = range(_COMPUTE_FIRST, _COMPUTE_FIRST + 6)


async def service() -> None:
    await asyncio.sleep(0)
    sleeping_step()
    await asyncio.sleep(0.2)
    computing_step()
    # idle past a whole one-second window, so that the loop has a timeline to draw
    await asyncio.sleep(1.2)


@pytest.fixture(scope="module")
def report() -> Report:
    """A real report: a 100 ms sleep and 100 ms of computing at a 50 ms threshold."""
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(service())
    result = session.report()
    assert len(result.blocks) == 2, result
    assert len(result.loops) == 1 and result.loops[0].timeline, result.loops
    return result


@pytest.fixture(scope="module")
def page(report: Report) -> str:
    return render_html(report)


def _text(fragment: str) -> str:
    """What a reader sees of an HTML fragment: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


# -- a real session --------------------------------------------------------------------


def test_page_shows_each_block_site_with_its_source_line_marked(
    report: Report, page: str
) -> None:
    """Each block names its site, and its source is shown with the blocking line marked."""
    sites = {block.site for block in report.blocks}
    assert f"{__file__}:{SLEEP_LINE}" in sites
    for block in report.blocks:
        assert block.site is not None
        assert html.escape(short_site(block.site)) in page
        line = int(block.site.rpartition(":")[2])
        hit = re.search(rf'<span class="line hit"><span class="ln">{line}</span>(.*?)</span>\n?'
                        r'(?=<span class="line|</pre>)', page)
        assert hit is not None, block.site
        assert _text(hit[1]).strip() == linecache.getline(__file__, line).strip()
    assert "time.sleep(0.1)" in _text(page)


def test_block_details_say_waiting_or_computing_with_task_and_advice(
    report: Report, page: str
) -> None:
    """A block's header gives duration, waiting vs computing with CPU %, the task; then advice."""
    sleep = next(b for b in report.blocks if b.site == f"{__file__}:{SLEEP_LINE}")
    compute = next(b for b in report.blocks if b is not sleep)
    assert compute.site is not None
    assert int(compute.site.rpartition(":")[2]) in COMPUTE_LINES
    assert sleep.kind == "wait"
    articles = re.findall(r'<article class="card block" id="(block-\d+)">(.*?)</article>',
                          page, flags=re.S)
    assert [anchor for anchor, _ in articles] == ["block-1", "block-2"]
    text = {anchor: _text(body) for anchor, body in articles}
    sleep_text = next(t for t in text.values() if f":{SLEEP_LINE} in sleeping_step" in t)
    assert "waiting" in sleep_text
    assert re.search(r"CPU \d+%", sleep_text)
    assert re.search(r"task Task-\d+ · service\(\)", sleep_text)
    assert sleep.advice and sleep.advice in sleep_text
    assert any("computing_step" in t for t in text.values())


def test_timeline_has_one_mark_per_block_linking_to_its_detail(
    report: Report, page: str
) -> None:
    """The loop's SVG draws a bar per second, the 30% line, and one linked mark per block."""
    (svg,) = _svgs(page)
    marks = re.findall(r'<a href="#(block-\d+)"><rect class="mark k-(\w+)"', svg)
    assert len(marks) == len(report.blocks) == 2
    for anchor, _ in marks:
        assert f'id="{anchor}"' in page
    assert svg.count('class="bar') == len(report.loops[0].timeline)
    assert 'class="sat"' in svg
    # the tooltip of a mark names the block
    titles = re.findall(r'<rect class="mark[^>]*><title>(.*?)</title>', svg, flags=re.S)
    assert len(titles) == 2
    assert any(f":{SLEEP_LINE} in sleeping_step" in _text(t) for t in titles)


def test_summary_counts_blocks_and_names_the_busiest_loop(report: Report, page: str) -> None:
    """The summary gives the blocks over the threshold, the time blocked and the busiest loop."""
    cards = _text(page.split('<section class="cards">')[1].split("</section>")[0])
    assert "blocks over 50.0 ms2" in cards
    assert "blocked in total" in cards
    assert "busiest loop" in cards
    assert ("not saturated" in cards) != report.loops[0].saturated
    assert "dropped blocks0" in cards


def test_same_report_same_page_and_json_round_trip(report: Report, page: str) -> None:
    """Rendering is deterministic, and a report read back from its JSON gives the same page."""
    assert render_html(report) == page
    assert render_html(Report.from_json(report.to_json())) == page


def test_older_json_without_timeline_still_renders(report: Report) -> None:
    """A report written before loops had a timeline (or per-site extras) renders, marks and all."""
    data = json.loads(report.to_json())
    for loop in data["loops"]:
        del loop["timeline"]
        del loop["worst_window"]
    for site in data["sites"]:
        for key in ("requests", "blocks", "block_total", "gil_held"):
            del site[key]
    for block in data["blocks"]:
        del block["stacks"]
    old = render_html(Report.from_dict(data))
    (svg,) = _svgs(old)
    assert 'class="bar' not in svg
    assert svg.count('class="mark ') == 2
    assert "no per-second timeline in this report" in old


def test_page_references_nothing_outside_itself(page: str) -> None:
    """No URL, no external resource: only in-page links, an empty data: icon and a CSP."""
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\ssrc\s*=", page)
    assert set(re.findall(r'\shref="([^"]*)"', page)) - {"data:,"} <= {
        f"#{a}" for a in re.findall(r'\sid="([^"]+)"', page)
    }
    assert "url(" not in page and "@import" not in page
    assert "fetch(" not in page and "XMLHttpRequest" not in page
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';" in page


def test_sites_table_is_sortable(report: Report, page: str) -> None:
    """The sites table has sortable headers, raw sort values in its cells, and the script."""
    table = re.search(r'<table class="sortable" id="sites-table">.*?</table>', page, re.S)
    assert table is not None
    headers = re.findall(r'<th[^>]*data-type="(num|text)"[^>]*>([^<]*)</th>', table[0])
    assert [name for _, name in headers] == [
        "site", "count", "total", "p95", "max", "CPU", "GIL held"
    ]
    assert 'data-sorted="descending"' in table[0]
    assert len(re.findall(r"<tr data-i=", table[0])) == len(report.sites)
    assert re.search(r'<td class="n" data-v="[0-9.e-]+">', table[0])
    assert 'querySelectorAll("table.sortable")' in page


def test_module_docstring_example_holds() -> None:
    """The example in loopwatch.html_report's docstring runs as written."""
    result = doctest.testmod(loopwatch.html_report)
    assert result.attempted and not result.failed


def test_write_html_writes_the_rendered_page(report: Report, tmp_path: Path) -> None:
    """write_html writes render_html's page, UTF-8."""
    out = tmp_path / "report.html"
    write_html(report, out)
    assert out.read_text(encoding="utf-8") == render_html(report)


# -- start-up and garbage collection, from a real session ----------------------------------


class Node:
    def __init__(self) -> None:
        self.peer: Any = self  # a cycle only the collector can free


def collecting_step(garbage: list[list[Node]]) -> None:
    garbage.clear()  # the cycles are left for the collector
    gc.collect()  # the collecting line


_COLLECT_FIRST = inspect.getsourcelines(collecting_step)[1]
COLLECT_LINES = range(_COLLECT_FIRST + 1, _COLLECT_FIRST + 3)


async def starting_service(garbage: list[list[Node]]) -> None:
    await asyncio.sleep(0)
    importlib.import_module("loopwatch_slow_start")  # before the loop served anything
    await asyncio.sleep(0.05)
    collecting_step(garbage)
    await asyncio.sleep(0.05)
    sleeping_step()
    await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def phases_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    """A real report: a 100 ms import in the running loop (a start-up block), a full
    collection of a million reference cycles (a gc block), then a 100 ms sleep."""
    folder = tmp_path_factory.mktemp("startup")
    (folder / "loopwatch_slow_start.py").write_text(
        "import time\ntime.sleep(0.1)  # a slow import\n", encoding="utf-8")
    sys.path.insert(0, str(folder))
    gc.collect()
    gc.freeze()  # keep the rest of the heap out of the measured collection
    # and no automatic collection: the one collection is the line's, not the import's
    gc.disable()
    try:
        garbage = [[Node() for _ in range(1_000_000)]]
        with loopwatch.watch(threshold=0.05) as session:
            asyncio.run(starting_service(garbage))
    finally:
        gc.enable()
        gc.unfreeze()
        sys.path.remove(str(folder))
        sys.modules.pop("loopwatch_slow_start", None)
    result = session.report()
    kinds = sorted((b.phase, b.kind) for b in result.blocks)
    assert kinds == [("running", "gc"), ("running", "wait"), ("startup", "wait")], result.blocks
    yield result


def _section(page: str, anchor: str) -> str:
    """The page from the heading with this id to the next heading (or the footer)."""
    start = page.index(f'<h2 id="{anchor}">')
    ends = [i for i in (page.find("<h2 ", start + 1), page.find("<footer", start)) if i > 0]
    return page[start:min(ends)]


def test_startup_blocks_have_their_own_section_not_among_the_blocks(
    phases_report: Report,
) -> None:
    """The slow import is a start-up block: in its own section, not among the blocks."""
    (startup,) = phases_report.startup_blocks
    assert startup.site is not None and startup.site.endswith("loopwatch_slow_start.py:2")
    page = render_html(phases_report)
    blocks = _section(page, "blocks")
    assert blocks.count('<article class="card block"') == 2
    assert "loopwatch_slow_start.py" not in blocks
    assert "2, longest first" in _text(blocks)
    section = _section(page, "startup")
    (article,) = re.findall(r'<article class="card block" id="(block-\d+)">(.*?)</article>',
                            section, flags=re.S)
    assert article[0] == "block-3"  # numbered after the blocks, which are worst first
    assert '<span class="badge phase">start-up</span>' in article[1]
    assert "time.sleep(0.1)  # a slow import" in _text(article[1])
    assert "before the loop served anything" in _text(section)
    # pale on the timeline, and counted in the summary
    (svg,) = _svgs(page)
    assert re.search(r'<a href="#block-3"><rect class="mark k-wait startup"', svg)
    assert "pale: a start-up block" in page
    assert "1 of them at start-up" in _text(page.split('<section class="cards">')[1])
    assert '<a href="#startup">Start-up</a>' in page


def test_a_gc_block_is_garbage_collection_with_the_line_it_began_at(
    phases_report: Report,
) -> None:
    """A block spent collecting is labelled garbage collection, with its trigger line shown."""
    (block,) = [b for b in phases_report.blocks if b.kind == "gc"]
    # the line seen last before the collector took the GIL: the collecting line, or the
    # one before it when no look came between the two
    assert block.gc_trigger is not None
    path, _, line = block.gc_trigger.rpartition(":")
    assert path == __file__ and int(line) in COLLECT_LINES, block.gc_trigger
    page = render_html(phases_report)
    articles = dict(re.findall(r'<article class="card block" id="(block-\d+)">(.*?)</article>',
                               page, flags=re.S))
    (body,) = [b for b in articles.values() if "k-gc" in b]
    assert '<span class="kind k-gc">garbage collection</span>' in body
    text = _text(body)
    assert block.function == "garbage collection (generation 2)"
    assert "garbage collection (generation 2): " in text
    assert f"it began at {short_site(block.gc_trigger)}" in text
    hit = re.search(r'<span class="line hit"><span class="ln">(\d+)</span>(.*?)</span>', body)
    assert hit is not None and hit[1] == line
    assert _text(hit[2]).strip() == linecache.getline(__file__, int(line)).strip()
    (svg,) = _svgs(page)
    assert re.search(r'<rect class="mark k-gc"[^>]*><title>[^<]*garbage collection '
                     r"\(generation 2\), triggered at ", svg)
    assert "block: garbage collection" in page  # in the legend
    sites = _section(page, "sites")
    assert 'class="n kind-cell k-gc"' in sites


# -- hand-made reports ---------------------------------------------------------------------


APP = "/srv/<app>/handlers<v2>.py"
EVIL = "<script>alert('x')</script>"


def _block(block_id: int, *, loop: str = "L#1 (MainThread)", pid: int | None = 101,
           started: float = 1000.2, duration: float = 0.2, kind: Kind = "cpu",
           file: str = APP, line: int = 7, function: str = "handler") -> Block:
    frames = (
        Frame("/usr/lib/python3.11/asyncio/base_events.py", 1922, "_run_once"),
        Frame("/usr/lib/python3.11/asyncio/events.py", 80, "_run"),
        Frame(file, line, function),
    )
    return Block(
        id=block_id, loop=loop, started=started, duration=duration,
        cpu_ratio=0.97 if kind == "cpu" else 0.02, kind=kind,
        frames=frames, site=f"{file}:{line}", function=function, pid=pid,
        stacks=(Stack(frames, 9), Stack(frames[:2], 1)), samples=10, advice="move it",
    )


def _site(name: str, count: int, total: float) -> Site:
    return Site(site=name, function="handler", count=count, total=total, max=total / 2,
                p95=total / 2, cpu_ratio=1.0, kind="cpu", advice="move it", blocks=count,
                block_total=total)


def made_report() -> Report:
    """Two processes: one loop with a timeline and three blocks, one from an older core."""
    timeline = tuple((1000.0 + s, share, lag) for s, share, lag in
                     [(0, 0.1, 0.001), (1, 0.45, 0.2), (2, 0.05, None), (3, 0.2, 0.004)])
    loops = (
        LoopStats(loop="L#1 (MainThread)", iterations=None, busy=0.6, watched=4.0, blocks=3,
                  busy_fraction_sampled=0.2, worst_window=0.45, lag_p50=0.001, lag_max=0.2,
                  pid=101, timeline=timeline),
        LoopStats(loop="L#2 (idle)", iterations=None, busy=0.0, watched=4.0, blocks=0,
                  busy_fraction_sampled=0.0, worst_window=0.0, pid=101, timeline=timeline[:2]),
        LoopStats(loop="L#1 (MainThread)", iterations=None, busy=0.1, watched=2.0, blocks=1,
                  pid=202),
    )
    blocks = (
        _block(1, started=1000.2, duration=0.15),
        _block(2, started=1001.1, duration=0.3, kind="wait", line=9),
        _block(3, started=1003.5, duration=0.1, kind="mixed", line=11),
        _block(1, pid=202, started=1000.5, duration=0.12),  # same id and loop name, other pid
    )
    sites = (_site("a.py:1", 2, 0.9), _site("b.py:2", 7, 0.5), _site("c.py:3", 4, 0.2))
    return Report(threshold=0.1, blocks=blocks, sites=sites, loops=loops, dropped_blocks=2,
                  events=("worker processes watched: pid 202",))


def made_stalls() -> tuple[Stall, ...]:
    """Four stalls: two of CPU contention and a stop on pid 101's busy loop, a quota on 202's."""
    loop = "L#1 (MainThread)"
    return (
        Stall(loop, 1000.6, 0.152, "starved", queued=0.14, busy=0.012, site=f"{APP}:7",
              function="handler", task=EVIL, request="GET /<id>", pid=101),
        Stall(loop, 1002.2, 0.31, "paused", queued=0.0, paused=0.3, busy=0.01, pid=101),
        Stall(loop, 1001.5, 0.12, "starved", queued=0.11, pid=101),
        Stall(loop, 1000.9, 0.2, "throttled", queued=0.18, throttled=0.17, pid=202),
    )


def test_stalls_are_counted_per_cause_listed_and_marked_apart_from_blocks() -> None:
    """Stalls: a summary card and line, per cause how many and the longest, a row each
    linked from a mark in the loop's stall lane; the blocks and sites are unchanged."""
    report = replace(made_report(), stalls=made_stalls())
    page = render_html(report)
    cards = _text(page.split('<section class="cards">')[1].split("</section>")[0])
    assert "stalls4" in cards and "blocks over 100 ms6" in cards
    lines = re.findall(r'<ul class="stall-lines">(.*?)</ul>', page)
    assert [_text(li) for li in re.findall(r"<li>.*?</li>", lines[0])] == stall_lines(report)

    section = _section(page, "stalls")
    causes = _text(section.split('<section class="cards">')[1].split("</section>")[0])
    assert "CPU contention2longest 152 ms: the machine did not run" in causes
    assert "process stopped1longest 310 ms" in causes
    assert "CPU quota ran out1longest 200 ms" in causes
    table = re.search(r'<table class="sortable" id="stalls-table">.*?</table>', section, re.S)
    assert table is not None
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table[0])
    assert headers == ["when", "loop", "duration", "cause", "run-queue delay", "paused",
                       "throttled", "the loop was running"]
    rows = re.findall(r'<tr data-i="\d+" id="(stall-\d+)">(.*?)</tr>', table[0])
    assert [anchor for anchor, _ in rows] == ["stall-1", "stall-2", "stall-3", "stall-4"]
    assert [_text(row) for _, row in rows] == [
        f"00:16:40.600 UTCpid 101 L#1 (MainThread)152 msCPU contention140 ms--"
        f"{APP}:7 in handler, GET /<id>, task {EVIL}",
        "00:16:40.900 UTCpid 202 L#1 (MainThread)200 msCPU quota ran out180 ms-170 ms-",
        "00:16:41.500 UTCpid 101 L#1 (MainThread)120 msCPU contention110 ms---",
        "00:16:42.200 UTCpid 101 L#1 (MainThread)310 msprocess stopped0.0 ms300 ms--",
    ]

    busy, idle, other = _svgs(page)
    marks = re.findall(r'<a href="#(stall-\d+)"><rect class="stall-mark s-(\w+)"', busy)
    assert marks == [("stall-1", "starved"), ("stall-3", "starved"), ("stall-4", "paused")]
    assert re.findall(r'<a href="#(stall-\d+)"><rect class="stall-mark s-(\w+)"', other) == [
        ("stall-2", "throttled")]
    assert "stall-mark" not in idle and ">stalls</text>" not in idle
    assert busy.count('class="mark ') == 3  # the blocks are marked as before
    titles = re.findall(r'<rect class="stall-mark[^>]*><title>(.*?)</title>', busy, re.S)
    assert _text(titles[0]).startswith("stall: 152 ms, CPU contention (not a block")
    assert "waiting for a CPU 140 ms" in _text(titles[0])
    assert "stall: process stopped" in page  # in the legend
    assert "3 stalls (not run by the machine)" in page
    # nothing of the stalls reaches the blocks or the sites
    assert _section(page, "blocks").count('<article class="card block"') == 4
    assert "stall" not in _section(page, "sites")
    # escaped, and every link lands on the page
    assert EVIL not in page and "<id>" not in page
    assert set(re.findall(r'\shref="#([^"]*)"', page)) <= set(re.findall(r'\sid="([^"]+)"', page))
    assert '<a href="#stalls">Stalls</a>' in page


def test_only_stalls_is_no_blocks_but_says_whose_doing_they_were() -> None:
    """A report with stalls and no blocks is clean for the program, and says so."""
    page = render_html(Report(threshold=0.1, stalls=made_stalls()[1:2]))
    assert "No blocks over 100 ms: the program never held a loop that long" in page
    assert "the process was stopped" in _text(_section(page, "stalls"))
    assert not _svgs(page)  # no loop, no timeline


def test_loops_are_grouped_by_process_with_their_own_blocks() -> None:
    """Loops of different processes are apart, and each marks only its own process's blocks."""
    page = render_html(made_report())
    assert "<h3>process 101</h3>" in page and "<h3>process 202</h3>" in page
    busy, idle, other = _svgs(page)
    assert busy.count('class="mark ') == 3
    assert busy.count('class="bar') == 4
    assert idle.count('class="mark ') == 0 and "no blocks on this loop" in idle
    assert other.count('class="mark ') == 1 and 'class="bar' not in other
    # blocks sharing an id across processes still get their own anchors
    anchors = re.findall(r'<article class="card block" id="([^"]+)"', page)
    assert sorted(anchors) == ["block-1", "block-2", "block-3", "block-4"]
    # a window with no heartbeat back breaks the lag line in two
    assert busy.count("<polyline") == 1 and busy.count('class="lag-dot"') == 3


def test_summary_shows_dropped_blocks_and_notes() -> None:
    """Dropped blocks are counted, and events are listed as notes."""
    page = render_html(made_report())
    assert "blocks over 100 ms6" in _text(page)
    assert "<li>worker processes watched: pid 202</li>" in page
    assert "2 older block(s) were not kept (max_blocks)" in page
    assert '<span class="badge bad">saturated</span>' in page


def test_a_loop_with_neither_timeline_nor_blocks_says_so() -> None:
    """A loop with nothing to draw gets a sentence instead of an empty chart."""
    stats = LoopStats(loop="L#9", iterations=None, busy=0.0, watched=1.0, blocks=0)
    page = render_html(Report(threshold=0.1, loops=(stats,)))
    assert not _svgs(page)
    assert "No blocks, and no per-second timeline in this report" in page
    assert "No blocks over 100 ms" in page


def test_everything_from_the_report_is_escaped(tmp_path: Path) -> None:
    """Names, tasks, requests, notes and source lines with < and & come out as text, not markup."""
    source = tmp_path / "gen<1>.py"
    source.write_text("def f(a, b):\n    if a < b and b > 0:  # <b>not bold</b> & co\n"
                      "        return '<i>'\n", encoding="utf-8")
    frames = (Frame(str(source), 2, "<lambda>"),)
    block = Block(
        id=1, loop="<Loop#1>", started=1.0, duration=0.2, cpu_ratio=None, kind="unknown",
        frames=frames, site=f"{source}:2", function="<lambda>", task=EVIL,
        coroutine="<coro>", request="GET /items?<q>&x=1", callback="<cb>", advice=EVIL,
    )
    site = Site(site=f"{APP}:3", function="<lambda>", count=1, total=0.2, max=0.2, p95=0.2,
                cpu_ratio=None, kind="unknown", advice=EVIL, requests=("GET /<id>",))
    call = BlockingCall(call="open", detail="notes/<x>.txt", site=f"{APP}:3", function="<genexpr>",
                        frames=frames, task=EVIL, thread="MainThread", at=1.0)
    loop = LoopStats(loop="<Loop#1>", iterations=None, busy=0.0, watched=1.0, blocks=1)
    report = Report(threshold=0.1, blocks=(block,), sites=(site,), loops=(loop,),
                    calls=(call,), events=(f"note {EVIL} see https://example.invalid/?a=1&b",))
    page = render_html(report, title="<report> & co")
    assert page.count("<script") == 1  # the page's own
    for raw in ("<lambda>", "<Loop#1>", "<coro>", "<q>", "<app>", "<b>not bold", "<i>",
                "<x>", "<genexpr>", "<cb>", "<id>", "<report>", "gen<1>"):
        assert raw not in page, raw
    assert "&lt;lambda&gt;" in page and "&lt;report&gt; &amp; co</title>" in page
    # the source line is there, escaped and marked
    hit = re.search(r'<span class="line hit">(.*?)</span>\n?(?=<span class="line|</pre>)',
                    page)
    assert hit is not None
    assert _text(hit[1]) == "2    if a < b and b > 0:  # <b>not bold</b> & co"
    # the only URL in the page is the one in the user's note, as text
    escaped_note = html.escape(f"note {EVIL} see https://example.invalid/?a=1&b")
    assert escaped_note in page
    rest = page.replace(escaped_note, "")
    assert "http://" not in rest and "https://" not in rest


def test_unreadable_source_shows_just_the_site() -> None:
    """A block whose file is gone shows its site and stack, without a source listing."""
    block = _block(1, file="/nonexistent/app.py", line=3)
    page = render_html(Report(threshold=0.1, blocks=(block,)))
    assert "<code>/nonexistent/app.py:3</code> in <code>handler</code>" in page
    assert '<pre class="source">' not in page


def test_strict_calls_are_grouped_by_call_and_line() -> None:
    """Strict mode's calls are one row per call and line, with how many."""
    def call(name: str, line: int, detail: str) -> BlockingCall:
        return BlockingCall(call=name, detail=detail, site=f"app.py:{line}", function="f",
                            frames=(), task="t", thread="MainThread", at=1.0)

    calls = (call("time.sleep", 3, "0.001"), call("open", 5, "notes.txt"),
             call("time.sleep", 3, "0.002"), call("time.sleep", 4, "0.5"))
    page = render_html(Report(threshold=0.1, calls=calls, dropped_calls=1))
    table = re.search(r'<table class="sortable" id="calls-table">.*?</table>', page, re.S)
    assert table is not None
    rows = [_text(r) for r in re.findall(r"<tr data-i=.*?</tr>", table[0])]
    assert rows == ["2time.sleepapp.py:3f0.001 (task t)", "1openapp.py:5fnotes.txt (task t)",
                    "1time.sleepapp.py:4f0.5 (task t)"]
    assert "1 older blocking call(s) were not kept" in page


def test_profile_mode_functions_are_listed() -> None:
    """Profile mode's functions get their own sortable table, and a block names its heaviest."""
    stats = (FunctionStat("json.loads", "json", 0, own=0.15, total=0.2, calls=3),
             FunctionStat("<listcomp>", APP, 12, own=0.01, total=0.01, calls=1000))
    block = replace(_block(1), functions=stats)
    page = render_html(Report(threshold=0.1, blocks=(block,), functions=stats))
    table = re.search(r'<table class="sortable" id="functions-table">.*?</table>', page, re.S)
    assert table is not None
    rows = [_text(r) for r in re.findall(r"<tr data-i=.*?</tr>", table[0])]
    assert rows[0] == "json.loads150 ms200 ms3json"
    assert rows[1].startswith("<listcomp>10.0 ms10.0 ms1,000")
    assert "profile: json.loads 150 ms, <listcomp> 10.0 ms" in _text(page)
    assert "<listcomp>" not in page


# -- in a browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

#: No DNS, no proxy that answers, no background traffic: nothing can load from anywhere.
_OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-first-run", "--disable-extensions",
]


def _chromium(*args: str, profile: Path) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90, check=True,
    )
    return done.stdout


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked for (the browser's own requests are not the page's)."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"] for event in log["events"]
        if event["type"] == start_job and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]


def _png_rows(path: Path, rows: int) -> tuple[int, int, list[bytes]]:
    """Width, height and the first ``rows`` rows of an 8-bit RGB(A) PNG, as pixel bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    prior = bytearray(stride)
    out = []
    for y in range(min(rows, height)):
        offset = y * (stride + 1)
        kind_of_filter, line = raw[offset], bytearray(raw[offset + 1:offset + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prior[i], (prior[i - bpp] if i >= bpp else 0)
            if kind_of_filter == 1:
                line[i] = (line[i] + left) & 255
            elif kind_of_filter == 2:
                line[i] = (line[i] + up) & 255
            elif kind_of_filter == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 255
            elif kind_of_filter == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 255
        out.append(bytes(line))
        prior = line
    return width, height, out


@needs_chromium
def test_screenshot_shows_a_full_page(report: Report, tmp_path: Path) -> None:
    """Chromium renders the page: a 1280x2000 screenshot with a light page full of content."""
    path = tmp_path / "report.html"
    write_html(report, path)
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", *_OFFLINE,
              path.as_uri(), profile=tmp_path / "profile")
    width, height, rows = _png_rows(shot, 500)
    assert (width, height) == (1280, 2000)
    pixels = [row[i:i + 3] for row in rows for i in range(0, len(row), 3)]
    ((background, most),) = Counter(pixels).most_common(1)
    css_background = re.search(r"--bg: #([0-9a-f]{6})", loopwatch.html_report._CSS)
    assert css_background is not None
    assert background == bytes.fromhex(css_background[1])  # the stylesheet applied
    assert most < 0.95 * len(pixels)  # text, cards and the chart cover the rest
    assert len(set(pixels)) > 50  # anti-aliased text and colours, not a flat page


@needs_chromium
def test_page_works_offline_and_fetches_nothing(tmp_path: Path) -> None:
    """With the network unreachable the script runs, the table sorts, the SVG is drawn,
    and the page requests nothing (a page that does is caught the same way)."""
    page = render_html(made_report())
    # sort by count with a click, as a reader would
    click = '<script>document.querySelector("#sites-table th:nth-child(2)").click();</script>'
    page = page.replace("</body>", click + "</body>")
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    net_log = tmp_path / "net.json"
    dom = _chromium("--dump-dom", f"--log-net-log={net_log}", *_OFFLINE, path.as_uri(),
                    profile=tmp_path / "profile")
    assert re.search(r'<html lang="en" class="js">', dom)
    table = re.search(r'<table class="sortable" id="sites-table">.*?</table>', dom, re.S)
    assert table is not None
    assert re.search(r'<th class="n" data-type="num" scope="col" tabindex="0" '
                     r'aria-sort="descending">count</th>', table[0])
    order = [name.strip() for name in re.findall(r'<div class="site-name">([^<]+)', table[0])]
    assert order == ["b.py:2", "c.py:3", "a.py:1"]  # by count: 7, 4, 2
    assert len(re.findall(r"<svg\b", dom)) == 3
    assert _page_requests(net_log) == []

    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><img src="http://loopwatch-probe.invalid/x.png">',
                       encoding="utf-8")
    control_log = tmp_path / "control.json"
    _chromium("--dump-dom", f"--log-net-log={control_log}", *_OFFLINE, control.as_uri(),
              profile=tmp_path / "profile-control")
    assert _page_requests(control_log) == ["http://loopwatch-probe.invalid/x.png"]
