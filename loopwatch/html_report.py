"""A self-contained HTML report: one file that opens offline and reads well in a browser.

Like the console renderer, this only formats a :class:`~loopwatch.model.Report`:
every number comes from the model. The page has

- a summary (blocks over the threshold, time blocked, the busiest loop and
  whether it was saturated, the threshold, dropped blocks, stalls) and the notes;
- per loop (grouped by process when there are several), an inline SVG timeline
  of its busy share and heartbeat lag per second, with its blocks marked at
  their start and duration (start-up blocks pale) and its stalls in a lane of
  their own; a mark's tooltip names the block or stall and a click jumps to it;
- each block, worst first: duration, waiting, computing or garbage collection
  (CPU, GIL, GC, the line a collection began at), task, request, the source
  lines around its site, the stack and the advice;
- the start-up blocks (before the loop served anything) apart, in their order;
- the sites table (sorted by clicking its headers), strict mode's blocking
  calls and profile mode's functions;
- the stalls (iterations the machine did not run the loop's thread in): per
  cause how many and the longest, then a sortable table of them.

CSS and the few lines of script are inline, and a Content-Security-Policy lets
the page fetch nothing at all: it can be mailed, attached to a ticket or opened
on an air-gapped machine, and looks the same. Rendering the same report twice
gives the same page.

>>> from loopwatch.model import Report
>>> page = render_html(Report(threshold=0.05))
>>> page.startswith("<!DOCTYPE html>"), "No blocks over 50.0 ms" in page
(True, True)
"""

from __future__ import annotations

import functools
import html
import linecache
import math
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from pygments import lex  # type: ignore[import-untyped]  # rich's own highlighter
from pygments.lexers.python import PythonLexer  # type: ignore[import-untyped]
from pygments.token import Token  # type: ignore[import-untyped]

from loopwatch._format import (
    KIND_LABEL,
    STALL_CAUSE,
    STALL_CAUSE_SHORT,
    STALL_MEANING,
    STARTUP_MEANING,
    block_facts,
    block_who,
    duration,
    percent,
    plural,
    report_notes,
    short_path,
    short_site,
    stall_lines,
)
from loopwatch._stackview import Folded, callback_start, stack_view
from loopwatch.model import (
    Block,
    BlockingCall,
    Frame,
    FunctionStat,
    LoopStats,
    Report,
    Stack,
    Stall,
)
from loopwatch.stacks import UserCode

__all__ = ["render_html", "write_html"]

#: Lines of source shown above and below a block's line (as in the console report).
_CONTEXT = 2


#: Short blocks at one site from which it reads as "a thousand cuts".
_MANY_CUTS = 3

#: Library frames kept below the blocking line (what it called); deeper ones are folded.
_INNER_FRAMES = 3


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)




def _clock(wall: float, digits: int = 3) -> str:
    """A wall-clock time in UTC: the same page whatever the reader's time zone."""
    moment = datetime.fromtimestamp(wall, tz=UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if digits:
        text += f".{moment.microsecond // 10 ** (6 - digits):0{digits}d}"
    return text + " UTC"


def _path(path: str) -> str:
    return short_path(path)


def _site_name(site: str | None) -> str:
    if not site:
        return short_site(site)
    path, _, line = site.rpartition(":")
    return f"{_path(path)}:{line}" if path else site


def _kind_label(kind: str) -> str:
    return KIND_LABEL.get(kind, "unknown")


def _kind_class(kind: str) -> str:
    return f"k-{kind}" if kind in ("cpu", "wait", "mixed", "gc") else "k-unknown"


def _cause_class(cause: str) -> str:
    return f"s-{cause}" if cause in STALL_CAUSE else "s-starved"


def _cause_label(cause: str) -> str:
    return STALL_CAUSE_SHORT.get(cause, cause)


# -- the page -------------------------------------------------------------------------


_CSS = """
:root {
  --bg: #f4f5f7; --card: #ffffff; --line: #e2e5ea; --text: #1c2430; --muted: #667085;
  --faint: #98a2b3; --accent: #2f6fde; --cpu: #d92d20; --wait: #dc8a03; --mixed: #7f56d9;
  --unknown: #667085; --gc: #1570ef; --stall: #98a2b3; --stall-paused: #475467;
  --stall-quota: #b692f6; --ok: #079455; --busy: #8db4f0; --hot: #f79052; --lag: #1d2939;
  --code-bg: #f8f9fb; --hit: #fdecea;
  --sans: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Liberation Sans", sans-serif;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
    "DejaVu Sans Mono", monospace;
}
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--text); font: 14px/1.5 var(--sans); }
main { max-width: 1120px; margin: 0 auto; padding: 28px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 2px; letter-spacing: -0.01em; }
h2 { font-size: 17px; margin: 36px 0 12px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); }
h2 .count { color: var(--muted); font-weight: normal; font-size: 14px; margin-left: 6px; }
h3 { font-size: 14px; margin: 20px 0 8px; color: var(--muted); text-transform: uppercase;
  letter-spacing: 0.04em; }
code, pre, .mono { font-family: var(--mono); font-size: 12.5px; }
.sub { color: var(--muted); margin: 0; }
.muted { color: var(--muted); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; margin: 0 0 14px; box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr));
  gap: 12px; margin-top: 20px; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 16px; }
.stat .label { color: var(--muted); font-size: 12.5px; font-weight: 600; }
.stat .value { font-size: 26px; font-weight: 650; margin: 2px 0; white-space: nowrap; }
.stat .note { color: var(--muted); font-size: 12.5px; overflow-wrap: anywhere; }
.stat .loop-ref { font-size: 11.5px; }
.value.bad { color: var(--cpu); }
.value.good { color: var(--ok); }
.badge { display: inline-block; font-size: 11.5px; font-weight: 600; padding: 1px 8px;
  border-radius: 999px; vertical-align: middle; border: 1px solid transparent; }
.badge.bad { color: var(--cpu); background: #fef3f2; border-color: #fecdca; }
.badge.good { color: var(--ok); background: #ecfdf3; border-color: #abefc6; }
.notes { margin: 14px 0 0; padding: 10px 14px; border-radius: 8px; background: #f9fafb;
  border: 1px solid var(--line); color: #344054; list-style: none; }
.notes li { margin: 2px 0; }
.notes li::before { content: "note: "; color: var(--muted); }
.clean { margin-top: 16px; padding: 14px 18px; border-radius: 10px; background: #ecfdf3;
  border: 1px solid #abefc6; color: var(--ok); font-weight: 600; }
.loop-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 14px; }
.loop-name { font-family: var(--mono); font-weight: 650; font-size: 13.5px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0 4px; }
.fact { background: #f2f4f7; border-radius: 6px; padding: 1px 8px; font-size: 12.5px;
  color: #344054; font-variant-numeric: tabular-nums; }
.fact.bad { background: #fef3f2; color: var(--cpu); font-weight: 600; }
.warn { color: var(--cpu); font-size: 13px; margin: 6px 0 0; }
.chart { margin-top: 10px; }
.chart svg { display: block; width: 100%; height: auto; }
.chart text { font-family: var(--sans); font-size: 11px; fill: var(--muted); }
.chart .grid { stroke: #eef0f3; stroke-width: 1; }
.chart .axis { stroke: #d0d5dd; stroke-width: 1; }
.chart .bar { fill: var(--busy); }
.chart .bar.hot { fill: var(--hot); }
.chart .sat { stroke: var(--cpu); stroke-width: 1.2; stroke-dasharray: 5 4; }
.chart text.sat-label { fill: var(--cpu); }
.chart .lag { fill: none; stroke: var(--lag); stroke-width: 1.6; stroke-linejoin: round; }
.chart .lag-dot { fill: var(--lag); }
.chart .lane { fill: #f2f4f7; }
.chart a:hover .mark, .chart a:focus .mark { stroke: var(--text); stroke-width: 1.5; }
.chart text.mark-label { fill: #ffffff; font-weight: 700; font-size: 10.5px;
  pointer-events: none; }
.chart text.mark-label.beside { fill: var(--text); }
.chart text.empty { fill: var(--faint); font-size: 12px; }
.k-cpu { fill: var(--cpu); } .k-wait { fill: var(--wait); }
.k-mixed { fill: var(--mixed); } .k-unknown { fill: var(--unknown); }
.k-gc { fill: var(--gc); }
.chart .mark.startup { opacity: 0.45; }
.chart .stall-mark { stroke: #ffffff; stroke-width: 0.5; }
.chart a:hover .stall-mark, .chart a:focus .stall-mark { stroke: var(--text); stroke-width: 1.5; }
.s-starved { fill: var(--stall); } .s-throttled { fill: var(--stall-quota); }
.s-paused { fill: var(--stall-paused); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12px; color: var(--muted);
  margin-top: 6px; }
.legend i { display: inline-block; width: 12px; height: 10px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; }
.legend i.line { height: 2px; vertical-align: 3px; border-radius: 0; }
.sw-busy { background: var(--busy); } .sw-hot { background: var(--hot); }
.sw-lag { background: var(--lag); } .sw-k-cpu { background: var(--cpu); }
.sw-k-wait { background: var(--wait); } .sw-k-mixed { background: var(--mixed); }
.sw-k-unknown { background: var(--unknown); } .sw-k-gc { background: var(--gc); }
.sw-startup { background: var(--unknown); opacity: 0.45; }
.sw-s-starved { background: var(--stall); } .sw-s-throttled { background: var(--stall-quota); }
.sw-s-paused { background: var(--stall-paused); }
.stall-lines { margin: 14px 0 0; padding: 10px 14px; border-radius: 8px; background: #f9fafb;
  border: 1px solid var(--line); color: #344054; list-style: none; }
.stall-lines li { margin: 2px 0; }
.stall-lines li::before { content: "stalls: "; color: var(--muted); }
.explain { color: var(--muted); margin: -4px 0 12px; }
tr:target { background: #eef4ff; }
.badge.phase { color: var(--muted); background: #f2f4f7; border-color: var(--line); }
.block { scroll-margin-top: 16px; }
.block:target { border-color: var(--accent); box-shadow: 0 0 0 3px rgba(47, 111, 222, 0.18); }
.block-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 12px; }
.num { color: var(--muted); font-weight: 650; }
.dur { font-size: 18px; font-weight: 700; font-variant-numeric: tabular-nums; }
.kind { font-weight: 650; }
.kind.k-cpu { color: var(--cpu); } .kind.k-wait { color: var(--wait); }
.kind.k-mixed { color: var(--mixed); } .kind.k-unknown { color: var(--unknown); }
.kind.k-gc { color: var(--gc); }
.kind-facts { color: #344054; }
.who { color: #1570a6; }
.meta { color: var(--muted); font-size: 12.5px; margin: 2px 0 8px; }
.where { margin: 6px 0; }
.where code { font-weight: 650; }
pre.source { background: var(--code-bg); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 0; margin: 8px 0; overflow-x: auto; line-height: 1.55; tab-size: 4; }
pre.source .line { display: block; padding: 0 14px 0 0; white-space: pre; }
pre.source .ln { display: inline-block; min-width: 4.5em; padding-right: 1.2em;
  text-align: right; color: var(--faint); user-select: none; }
pre.source .hit { background: var(--hit); box-shadow: inset 3px 0 0 var(--cpu); }
pre.source .hit .ln { color: var(--cpu); font-weight: 700; }
.tk { color: #7c3aed; font-weight: 600; } .ts { color: #067647; } .tc { color: #8a94a6;
  font-style: italic; } .tm { color: #b54708; } .tb { color: #175cd3; } .tf { color: #1d2939;
  font-weight: 650; }
.stack { list-style: none; margin: 8px 0; padding: 6px 0 6px 12px;
  border-left: 2px solid var(--line); font-family: var(--mono); font-size: 12.5px; }
.stack li { margin: 1px 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.stack .lib { color: var(--faint); }
.stack .user { color: var(--text); font-weight: 600; }
.stack .site { color: var(--cpu); font-weight: 700; }
.stack .mk { display: inline-block; width: 1.4em; color: var(--cpu); }
.stack .in { color: var(--faint); font-weight: normal; }
.stack details ol { list-style: none; padding-left: 0; margin: 2px 0 4px; }
details > summary { cursor: pointer; color: var(--muted); }
details > summary:hover { color: var(--accent); }
.others { margin: 6px 0; font-size: 13px; }
.others .stack { margin-top: 4px; }
.profile { color: var(--muted); font-size: 13px; margin: 6px 0; }
.advice { margin: 10px 0 0; padding: 8px 12px; border-radius: 8px; background: #ecfdf3;
  color: #05603a; border: 1px solid #d1fadf; }
.advice::before { content: "\\2192  "; font-weight: 700; }
table { width: 100%; border-collapse: collapse; background: var(--card); }
.table-card { padding: 4px 0; overflow-x: auto; }
th, td { padding: 8px 12px; text-align: left; vertical-align: top;
  border-bottom: 1px solid #eef0f3; }
tbody tr:last-child td { border-bottom: none; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted);
  font-weight: 600; white-space: nowrap; user-select: none; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f9fafb; }
.js th[data-type] { cursor: pointer; }
.js th[data-type]:hover { color: var(--text); }
.js th[data-type]::after { content: "\\2195"; margin-left: 4px; color: #d0d5dd; }
.js th[aria-sort="ascending"]::after { content: "\\25B2"; color: var(--accent); }
.js th[aria-sort="descending"]::after { content: "\\25BC"; color: var(--accent); }
td .site-name { font-family: var(--mono); font-weight: 650; font-size: 12.5px;
  overflow-wrap: anywhere; }
td .line2 { font-size: 12.5px; margin-top: 2px; }
td .cuts { color: var(--wait); }
td .reqs { color: #1570a6; }
td .tip { color: #05603a; }
td.kind-cell.k-cpu { color: var(--cpu); font-weight: 650; }
td.kind-cell.k-wait { color: var(--wait); font-weight: 650; }
td.kind-cell.k-mixed { color: var(--mixed); font-weight: 650; }
td.kind-cell.k-gc { color: var(--gc); font-weight: 650; }
nav { margin: 18px 0 0; font-size: 13px; color: var(--faint); }
nav a { margin-right: 2px; }
footer { margin-top: 40px; color: var(--faint); font-size: 12px; text-align: center; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
@media print { html { background: #fff; } .card, .stat { box-shadow: none; } }
"""

# Sorts a table when one of its headers is clicked (or focused and Enter pressed):
# numbers by their raw value in data-v, text by its lower-cased content, ties in the
# order the page was written, so that sorting is as deterministic as the page.
_JS = """
(function () {
  "use strict";
  function key(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }
  function sortBy(table, th, direction) {
    var index = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, index, numeric), y = key(b, index, numeric);
      var order = x < y ? -1 : x > y ? 1 : 0;
      if (direction === "descending") { order = -order; }
      return order || (+a.getAttribute("data-i") - +b.getAttribute("data-i"));
    });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll("th[data-type]").forEach(function (other) {
      other.setAttribute("aria-sort", "none");
    });
    th.setAttribute("aria-sort", direction);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th[data-type]").forEach(function (th) {
      var first = th.getAttribute("data-type") === "num" ? "descending" : "ascending";
      function toggle() {
        var now = th.getAttribute("aria-sort");
        var flipped = first === "descending" ? "ascending" : "descending";
        sortBy(table, th, now === first ? flipped : first);
      }
      th.tabIndex = 0;
      th.setAttribute("aria-sort", th.getAttribute("data-sorted") || "none");
      th.addEventListener("click", toggle);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); toggle(); }
      });
    });
  });
  document.documentElement.classList.add("js");
})();
"""

# The page may load nothing: no script, style, font or image from anywhere (the
# inline ones excepted), and no form or base URL that could send data out.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


def render_html(report: Report, *, title: str | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and JS, no network)."""
    heading = title or "loopwatch report"
    numbers = _numbers(report)
    stall_numbers = _stall_numbers(report)
    is_user = UserCode()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="loopwatch">',
        # an empty icon: no browser goes looking for favicon.ico
        '<link rel="icon" href="data:,">',
        f"<title>{_e(heading)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_e(heading)}</h1>",
        _subtitle(report),
        _summary(report),
        _nav(report),
        _loops(report, numbers, stall_numbers),
        _sites(report),
        _calls(report),
        _functions(report.functions),
        _blocks(report, numbers, is_user),
        _startup(report, numbers, is_user),
        _stalls(report, stall_numbers),
        f"<footer>loopwatch {_e(_version())} &middot; a self-contained page: "
        "it loads nothing from the network</footer>",
        "</main>",
        f"<script>{_JS}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def write_html(report: Report, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_html`'s page to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(render_html(report))


def _version() -> str:
    from loopwatch import __version__

    return str(__version__)


def _numbers(report: Report) -> dict[int, int]:
    """Each block's number on the page, by its index in ``report.blocks``.

    The blocks once the loops were running come first, longest first (1 = the
    longest); start-up blocks follow, in the order they happened. Keyed by index,
    not ``Block.id``: blocks merged from several processes can share an id.
    """
    blocks = report.blocks
    running = sorted((i for i, b in enumerate(blocks) if b.phase != "startup"),
                     key=lambda i: -blocks[i].duration)
    startup = [i for i, b in enumerate(blocks) if b.phase == "startup"]
    return {index: number for number, index in enumerate(running + startup, 1)}


def _stall_numbers(report: Report) -> dict[int, int]:
    """Each stall's row number in the stalls table (in the order they began), by index."""
    order = sorted(range(len(report.stalls)), key=lambda i: (report.stalls[i].started, i))
    return {index: number for number, index in enumerate(order, 1)}


def _anchor(number: int) -> str:
    return f"block-{number}"


def _stall_anchor(number: int) -> str:
    return f"stall-{number}"


def _heading(anchor: str, title: str, note: str) -> str:
    return f'<h2 id="{anchor}">{_e(title)}<span class="count">{_e(note)}</span></h2>'


def _nav(report: Report) -> str:
    sections = [("loops", "Loops", report.loops), ("sites", "Sites", report.sites),
                ("calls", "Blocking calls", report.calls),
                ("functions", "Functions", report.functions),
                ("blocks", "Blocks", report.worst(1)),
                ("startup", "Start-up", report.startup_blocks),
                ("stalls", "Stalls", report.stalls)]
    links = [f'<a href="#{anchor}">{name}</a>' for anchor, name, shown in sections if shown]
    return f'<nav>{" · ".join(links)}</nav>' if len(links) > 1 else ""


# -- summary --------------------------------------------------------------------------


def _subtitle(report: Report) -> str:
    facts = [f"threshold {duration(report.threshold)}"]
    if report.loops:
        facts.append(plural(len(report.loops), "loop"))
    processes = report.loops_by_process()
    if len(processes) > 1:
        facts.append(f"{len(processes)} processes")
    starts = ([b.started for b in report.blocks] + [s.started for s in report.stalls]
              + [p[0] for s in report.loops for p in s.timeline])
    if starts:
        facts.append(f"from {_clock(min(starts), 0)}")
    return f'<p class="sub">{_e(" · ".join(facts))}</p>'


def _stat(label: str, value: str, note: str = "", value_class: str = "") -> str:
    css = f"value {value_class}".strip()
    note_html = f'<div class="note">{note}</div>' if note else ""
    return (f'<div class="stat"><div class="label">{_e(label)}</div>'
            f'<div class="{css}">{value}</div>{note_html}</div>')


def _summary(report: Report) -> str:
    count = len(report.blocks) + report.dropped_blocks
    threshold = duration(report.threshold)
    startup = len(report.startup_blocks)
    stuck = "times a loop was stuck for longer"
    if startup:
        stuck += f", {startup} of them at start-up"
    cards = [
        _stat(f"blocks over {threshold}", _e(count), _e(stuck), "bad" if count else "good"),
        _stat("blocked in total", _e(duration(report.total_blocked)),
              _e("time the loops could not run anything else")),
    ]
    worst = report.busiest_loop
    processes = report.loops_by_process()
    if worst is None:
        cards.append(_stat("busiest loop", "-", _e("no busy time measured")))
    else:
        share = worst.worst_window if worst.worst_window is not None else worst.busy_fraction
        window = "in its busiest second" if worst.worst_window is not None else "overall"
        badge = ('<span class="badge bad">saturated</span>' if worst.saturated else
                 '<span class="badge good">not saturated</span>')
        # with one loop there is no need to say which (and its name is long)
        pid = f" · pid {worst.pid}" if worst.pid is not None and len(processes) > 1 else ""
        which = (f'<br><span class="mono loop-ref">{_e(worst.loop + pid)}</span>'
                 if len(report.loops) > 1 else "")
        cards.append(_stat(
            "busiest loop", f"{_e(percent(share))} {badge}", f"busy {_e(window)}{which}",
            "bad" if worst.saturated else "",
        ))
    cards.append(_stat("threshold", _e(threshold),
                       _e("iterations longer than this are blocks")))
    kept = "every block kept" if not report.dropped_blocks else "older ones (max_blocks)"
    cards.append(_stat("dropped blocks", _e(report.dropped_blocks), _e(kept),
                       "bad" if report.dropped_blocks else ""))
    if report.stalls:
        cards.append(_stat("stalls", f'<a href="#stalls">{_e(len(report.stalls))}</a>',
                           _e(f"long iterations {STALL_MEANING}")))
    out = [f'<section class="cards">{"".join(cards)}</section>']
    if not count and report.stalls:
        out.append(f'<div class="clean">No blocks over {_e(threshold)}: the program never '
                   "held a loop that long (its stalls were the machine's doing).</div>")
    elif not count:
        out.append(f'<div class="clean">No blocks over {_e(threshold)}: '
                   "the loops were never stuck for that long.</div>")
    lines = stall_lines(report)
    if lines:
        out.append('<ul class="stall-lines">' + "".join(f"<li>{_e(line)}</li>" for line in lines)
                   + "</ul>")
    notes = report_notes(report)
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


# -- loops and their timelines --------------------------------------------------------------


def _loops(report: Report, numbers: dict[int, int], stall_numbers: dict[int, int]) -> str:
    if not report.loops:
        return ""
    out = [_heading("loops", "Loops", str(len(report.loops)))]
    groups = report.loops_by_process()
    for pid, loops in groups:
        if len(groups) > 1:
            out.append(f"<h3>process {_e(pid if pid is not None else '?')}</h3>")
        for stats in loops:
            mine = [(numbers[i], b) for i, b in enumerate(report.blocks) if _of_loop(b, stats)]
            stalls = [(stall_numbers[i], s) for i, s in enumerate(report.stalls)
                      if _of_loop(s, stats)]
            out.append(_loop(stats, mine, stalls))
    return "\n".join(out)


def _of_loop(found: Block | Stall, stats: LoopStats) -> bool:
    # loop labels repeat across processes (each worker has its "#1 (MainThread)")
    same_process = found.pid is None or stats.pid is None or found.pid == stats.pid
    return found.loop == stats.loop and same_process


def _loop(stats: LoopStats, blocks: list[tuple[int, Block]],
          stalls: list[tuple[int, Stall]]) -> str:
    about = [f"{plural(stats.blocks, 'block')} in {stats.watched:,.1f} s watched"]
    if stats.resolution == "heartbeat":
        about.append("heartbeat resolution")
    if stats.pid is not None:
        about.append(f"pid {stats.pid}")
    head = (f'<span class="loop-name">{_e(stats.loop)}</span>'
            f'<span class="muted">{_e(" · ".join(about))}</span>')
    facts = []
    if stats.busy_measured:
        facts.append(f"busy {percent(stats.busy_fraction)}")
    if stats.worst_window is not None:
        facts.append(f"worst second {percent(stats.worst_window)}")
    for name, value in (("lag p50", stats.lag_p50), ("p95", stats.lag_p95),
                        ("p99", stats.lag_p99), ("max", stats.lag_max)):
        if value is not None:
            facts.append(f"{name} {duration(value)}")
    if stalls:
        facts.append(f"{plural(len(stalls), 'stall')} (not run by the machine)")
    saturated = stats.saturated and stats.busy_measured
    fact_html = "".join(
        f'<span class="fact{" bad" if saturated and f.startswith("worst") else ""}">{_e(f)}</span>'
        for f in facts
    )
    out = [f'<div class="card loop"><div class="loop-head">{head}</div>']
    if fact_html:
        out.append(f'<div class="facts">{fact_html}</div>')
    if saturated:
        out.append(f'<p class="warn">Busier than {stats.SATURATED:.0%} in some second: past '
                   "that, latency climbs fast. Move work off the loop, or spread it over more "
                   "processes.</p>")
    out.append(_timeline(stats, blocks, stalls))
    out.append("</div>")
    return "\n".join(out)


# Geometry of a timeline, in SVG user units (the SVG scales to the page's width).
_W = 1000
_LEFT = 48
_RIGHT = 62
_TOP = 12
_PLOT = _W - _LEFT - _RIGHT
_CHART_H = 120
_LANE_GAP = 10
_LANE_H = 22
_STALL_GAP = 4
_STALL_H = 14
_AXIS_H = 30

#: Data (seconds, shares) to SVG units.
_Scale = Callable[[float], float]

_TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)


def _f(value: float) -> str:
    """A coordinate: one decimal is finer than a pixel, and keeps the page small."""
    return f"{value:.1f}"


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (> 0): a scale's top.

    >>> _nice_ceiling(0.0966), _nice_ceiling(0.2), _nice_ceiling(3.1)
    (0.1, 0.2, 5.0)
    """
    scale = 10.0 ** math.floor(math.log10(value))
    return next(f * scale for f in (1, 2, 5, 10) if f * scale >= value * (1 - 1e-9))


def _timeline(stats: LoopStats, blocks: list[tuple[int, Block]],
              stalls: Sequence[tuple[int, Stall]] = ()) -> str:
    """The loop's busy share and lag per second, its blocks and its stalls, as an inline SVG.

    The time axis covers the timeline's windows, the loop's blocks and stalls: the
    timeline has whole seconds only, and a block can fall in the last, partial one.
    Stalls get a lane of their own under the blocks' (they are not blocks).
    """
    starts = ([p[0] for p in stats.timeline] + [b.started for _, b in blocks]
              + [s.started for _, s in stalls])
    ends = ([p[0] + 1 for p in stats.timeline] + [b.started + b.duration for _, b in blocks]
            + [s.started + s.duration for _, s in stalls])
    if not starts:
        return ('<p class="muted">No blocks, and no per-second timeline in this report '
                "(written by an older loopwatch, or the loop was watched for under a "
                "second).</p>")
    t0 = min(starts)
    span = max(max(ends) - t0, 1.0)
    # without a timeline there is nothing to draw above the blocks
    chart_h = _CHART_H if stats.timeline else 0
    lane_y = _TOP + chart_h + (_LANE_GAP if chart_h else 0)
    stall_y = lane_y + _LANE_H + _STALL_GAP
    axis_y = stall_y + _STALL_H if stalls else lane_y + _LANE_H
    height = axis_y + _AXIS_H

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * _PLOT

    def y(share: float) -> float:
        return _TOP + chart_h - share * chart_h

    label = (f"Timeline of {stats.loop}: busy share and lag per second, "
             f"{plural(len(blocks), 'block')} marked")
    if stalls:
        label += f", {plural(len(stalls), 'stall')}"
    svg = [f'<div class="chart"><svg viewBox="0 0 {_W} {height}" role="img" '
           f'aria-label="{_e(label)}">']
    svg += _x_axis(span, lane_y, axis_y)
    if stats.timeline:
        svg += _busy_and_lag(stats, x, y, _PLOT / span)
    svg += _marks(blocks, x, span, lane_y)
    if stalls:
        svg += _stall_marks(stalls, x, span, stall_y)
    svg.append("</svg></div>")
    return "\n".join(svg) + _legend(stats, blocks, t0, stalls)


def _marks(
    blocks: list[tuple[int, Block]], x: _Scale, span: float, lane_y: float
) -> list[str]:
    """The blocks: a mark each in the lane below the chart, under the seconds they took."""
    middle = _f(lane_y + _LANE_H / 2 + 4)
    out = [
        f'<rect class="lane" x="{_LEFT}" y="{lane_y}" width="{_PLOT}" height="{_LANE_H}" '
        'rx="3"/>',
        f'<text x="{_LEFT - 6}" y="{middle}" text-anchor="end">blocks</text>',
    ]
    if not blocks:
        out.append(f'<text class="empty" x="{_LEFT + 8}" y="{middle}">no blocks on this '
                   "loop</text>")
    ordered = sorted(blocks, key=lambda nb: (nb[1].started, nb[0]))
    for index, (number, block) in enumerate(ordered):
        left = x(block.started)
        width = max(block.duration / span * _PLOT, 3.0)
        kind = _kind_class(block.kind) + (" startup" if block.phase == "startup" else "")
        out.append(
            f'<a href="#{_anchor(number)}"><rect class="mark {kind}" x="{_f(left)}" '
            f'y="{lane_y + 2}" width="{_f(width)}" height="{_LANE_H - 4}" rx="2">'
            f"<title>{_e(_mark_title(number, block))}</title></rect>"
        )
        # the number inside a wide mark, beside a narrow one when the next is far enough
        room = (x(ordered[index + 1][1].started) if index + 1 < len(ordered) else _W) - left
        if width >= 24:
            out.append(f'<text class="mark-label" x="{_f(left + width / 2)}" y="{middle}" '
                       f'text-anchor="middle">#{number}</text>')
        elif room >= width + 30:
            out.append(f'<text class="mark-label beside" x="{_f(left + width + 3)}" '
                       f'y="{middle}">#{number}</text>')
        out.append("</a>")
    return out


def _stall_marks(
    stalls: Sequence[tuple[int, Stall]], x: _Scale, span: float, stall_y: float
) -> list[str]:
    """The stalls: a thin mark each, under the blocks' lane, linking to its row in the table."""
    out = [
        f'<rect class="lane" x="{_LEFT}" y="{stall_y}" width="{_PLOT}" height="{_STALL_H}" '
        'rx="3"/>',
        f'<text x="{_LEFT - 6}" y="{_f(stall_y + _STALL_H / 2 + 4)}" '
        'text-anchor="end">stalls</text>',
    ]
    for number, stall in sorted(stalls, key=lambda ns: (ns[1].started, ns[0])):
        width = max(stall.duration / span * _PLOT, 3.0)
        out.append(
            f'<a href="#{_stall_anchor(number)}"><rect class="stall-mark '
            f'{_cause_class(stall.cause)}" x="{_f(x(stall.started))}" y="{stall_y + 2}" '
            f'width="{_f(width)}" height="{_STALL_H - 4}" rx="2">'
            f"<title>{_e(_stall_title(stall))}</title></rect></a>"
        )
    return out


def _stall_title(stall: Stall) -> str:
    lines = [f"stall: {duration(stall.duration)}, {_cause_label(stall.cause)} "
             "(not a block: the machine did not run the loop's thread)",
             _stall_delays(stall), f"at {_clock(stall.started)}"]
    running = _stall_running(stall)
    if running:
        lines.append(f"running {running}")
    return "\n".join(line for line in lines if line)


def _stall_delays(stall: Stall) -> str:
    """Where a stall's time went: run-queue delay, paused, throttled (the ones it had)."""
    parts = [f"{name} {duration(value)}" for name, value in
             (("waiting for a CPU", stall.queued), ("paused", stall.paused),
              ("throttled", stall.throttled)) if value > 0]
    return ", ".join(parts)


def _stall_running(stall: Stall) -> str:
    """What the loop was running when it was not run: its line, function, request, task."""
    parts = []
    if stall.site:
        parts.append(f"{_site_name(stall.site)} in {stall.function or '?'}")
    if stall.request:
        parts.append(stall.request)
    if stall.task:
        parts.append(f"task {stall.task}")
    return ", ".join(parts)


def _x_axis(span: float, lane_y: float, axis_y: float) -> list[str]:
    """Seconds from the start of the axis, at a step that gives ten ticks at most."""
    step = next((s for s in _TICK_STEPS if span / s <= 10), _TICK_STEPS[-1])
    out = [f'<line class="axis" x1="{_LEFT}" x2="{_LEFT + _PLOT}" y1="{axis_y + 2}" '
           f'y2="{axis_y + 2}"/>']
    for index in range(int(span / step + 1e-9) + 1):
        seconds = index * step
        at = _LEFT + seconds / span * _PLOT
        out.append(f'<line class="grid" x1="{_f(at)}" x2="{_f(at)}" y1="{_TOP}" '
                   f'y2="{lane_y}"/>')
        out.append(f'<text x="{_f(at)}" y="{axis_y + 16}" text-anchor="middle">'
                   f"{_e(f'{round(seconds, 3):g} s')}</text>")
    return out


def _busy_and_lag(stats: LoopStats, x: _Scale, y: _Scale, second: float) -> list[str]:
    """The busy share as one bar per second (``second`` wide), the 30% line, the lag line."""
    chart_h = _CHART_H
    out = []
    for share in (0.0, 0.5, 1.0):
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + _PLOT}" y1="{_f(y(share))}" '
                   f'y2="{_f(y(share))}"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{_f(y(share) + 4)}" text-anchor="end">'
                   f"{share:.0%}</text>")
    gap = 1.0 if second > 4 else 0.0  # bars apart while there is room for a gap
    for start, share, lag in stats.timeline:
        hot = " hot" if share > stats.SATURATED else ""
        lag_text = f", worst lag {duration(lag)}" if lag is not None else ", no heartbeat"
        tip = f"{_clock(start, 0)[11:]}: busy {percent(share)}{lag_text}"
        out.append(f'<rect class="bar{hot}" x="{_f(x(start) + gap / 2)}" y="{_f(y(share))}" '
                   f'width="{_f(max(second - gap, 0.5))}" height="{_f(share * chart_h)}">'
                   f"<title>{_e(tip)}</title></rect>")
    out.append(f'<line class="sat" x1="{_LEFT}" x2="{_LEFT + _PLOT}" '
               f'y1="{_f(y(stats.SATURATED))}" y2="{_f(y(stats.SATURATED))}"/>')
    out.append(f'<text class="sat-label" x="{_LEFT - 6}" y="{_f(y(stats.SATURATED) + 4)}" '
               f'text-anchor="end">{stats.SATURATED:.0%}</text>')
    out += _lag_line(stats, x, chart_h)
    return out


def _lag_line(stats: LoopStats, x: _Scale, chart_h: float) -> list[str]:
    lags = [lag for _, _, lag in stats.timeline if lag is not None]
    right = _LEFT + _PLOT
    if not lags:
        return [f'<text x="{right + 6}" y="{_TOP + 10}">no lag</text>']
    top = _nice_ceiling(max(max(lags), 0.001))

    def y(lag: float) -> float:
        return _TOP + chart_h - min(lag / top, 1.0) * chart_h

    out = [
        f'<line class="axis" x1="{right}" x2="{right}" y1="{_TOP}" y2="{_TOP + chart_h}"/>',
        f'<text x="{right + 6}" y="{_TOP + 4}">{_e(duration(top))}</text>',
        f'<text x="{right + 6}" y="{_f(_TOP + chart_h / 2 + 4)}">lag</text>',
        f'<text x="{right + 6}" y="{_TOP + chart_h + 4}">0</text>',
    ]
    # a window with no heartbeat back breaks the line: the lag there is unknown
    runs: list[list[tuple[float, float]]] = [[]]
    for start, _, lag in stats.timeline:
        if lag is None:
            runs.append([])
        else:
            runs[-1].append((x(start + 0.5), y(lag)))
    for run in runs:
        if len(run) > 1:
            points = " ".join(f"{_f(px)},{_f(py)}" for px, py in run)
            out.append(f'<polyline class="lag" points="{points}"/>')
    dots = len(stats.timeline) <= 120
    for start, _, lag in stats.timeline:
        if lag is not None and dots:
            out.append(f'<circle class="lag-dot" cx="{_f(x(start + 0.5))}" cy="{_f(y(lag))}" '
                       f'r="3"><title>{_e(_clock(start, 0)[11:])}: worst lag '
                       f"{_e(duration(lag))}</title></circle>")
    return out


def _legend(stats: LoopStats, blocks: list[tuple[int, Block]], t0: float,
            stalls: Sequence[tuple[int, Stall]] = ()) -> str:
    items = [f"<span>seconds from {_e(_clock(t0, 0))}</span>"]
    if stats.timeline:
        items += [
            '<span><i class="sw-busy"></i>busy share per second</span>',
            f'<span><i class="sw-hot"></i>over {stats.SATURATED:.0%} (saturated)</span>',
            '<span><i class="line sw-lag"></i>worst heartbeat lag (right scale)</span>',
        ]
    kinds = list(dict.fromkeys(b.kind for _, b in sorted(blocks, key=lambda nb: nb[0])))
    for kind in kinds:
        items.append(f'<span><i class="sw-{_kind_class(kind)}"></i>'
                     f"block: {_e(_kind_label(kind))}</span>")
    if any(b.phase == "startup" for _, b in blocks):
        items.append('<span><i class="sw-startup"></i>pale: a start-up block</span>')
    causes = dict.fromkeys(s.cause for _, s in sorted(stalls, key=lambda ns: ns[0]))
    for cause in causes:
        items.append(f'<span><i class="sw-{_cause_class(cause)}"></i>'
                     f"stall: {_e(_cause_label(cause))}</span>")
    if blocks:
        items.append("<span>hover a block for its summary, click it for its detail</span>")
    if not stats.timeline:
        items.append("<span>no per-second timeline in this report (written by an older "
                     "loopwatch, or the loop was watched for under a second)</span>")
    return f'<div class="legend">{"".join(items)}</div>'


def _mark_title(number: int, block: Block) -> str:
    if block.kind == "gc":
        where = block.function or "garbage collection"
        if block.gc_trigger:
            where += f", triggered at {_site_name(block.gc_trigger)}"
    elif block.site:
        where = f"{_site_name(block.site)} in {block.function or '?'}"
    else:
        where = "no stack"
    phase = "start-up block: " if block.phase == "startup" else ""
    lines = [f"#{number}  {phase}{duration(block.duration)} {_kind_label(block.kind)}"
             + (f" (CPU {percent(block.cpu_ratio)})" if block.cpu_ratio is not None else ""),
             where, f"at {_clock(block.started)}"]
    who = _who(block)
    if who:
        lines.append(who)
    return "\n".join(lines)


# -- blocks ---------------------------------------------------------------------------


def _blocks(report: Report, numbers: dict[int, int], is_user: UserCode) -> str:
    """The blocks once the loops were running, longest first (start-up's are apart)."""
    order = [i for i in sorted(numbers, key=lambda index: numbers[index])
             if report.blocks[i].phase != "startup"]
    if not order:
        return ""
    out = [_heading("blocks", "Blocks", f"{len(order)}, longest first")]
    out += [_block(numbers[index], report.blocks[index], is_user) for index in order]
    return "\n".join(out)


def _startup(report: Report, numbers: dict[int, int], is_user: UserCode) -> str:
    """Start-up blocks, in the order they happened: apart, as the console shows them."""
    order = [i for i in sorted(numbers, key=lambda index: numbers[index])
             if report.blocks[i].phase == "startup"]
    if not order:
        return ""
    out = [_heading("startup", "Start-up", plural(len(order), "block")),
           f'<p class="explain">Blocks {_e(STARTUP_MEANING)}. They delay the first '
           "request, not the ones after it, so they are not among the blocks above.</p>"]
    out += [_block(numbers[index], report.blocks[index], is_user) for index in order]
    return "\n".join(out)


def _who(block: Block) -> str:
    return ", ".join(block_who(block))


def _block(number: int, block: Block, is_user: UserCode) -> str:
    facts = block_facts(block)
    head = [
        f'<span class="num">#{number}</span>',
        f'<span class="dur">{_e(duration(block.duration))}</span>',
        f'<span class="kind {_kind_class(block.kind)}">{_e(_kind_label(block.kind))}</span>',
    ]
    if block.phase == "startup":
        head.append('<span class="badge phase">start-up</span>')
    if block.resolution == "heartbeat":
        head.append('<span class="muted">± one heartbeat</span>')
    if facts:
        head.append(f'<span class="kind-facts">{_e(" · ".join(facts))}</span>')
    who = _who(block)
    if who:
        head.append(f'<span class="who">{_e(who)}</span>')
    meta = [f"at {_clock(block.started)}", f"loop {block.loop}"]
    if block.pid is not None:
        meta.append(f"pid {block.pid}")
    if block.samples:
        meta.append(plural(block.samples, "stack sample"))
    parts = [
        f'<article class="card block" id="{_anchor(number)}">',
        f'<div class="block-head">{"".join(head)}</div>',
        f'<div class="meta">{_e(" · ".join(meta))}</div>',
        _where(block),
        _source(block),
        _stack(block, is_user),
        _other_stacks(block, is_user),
        _profile_line(block.functions),
        f'<p class="advice">{_e(block.advice)}</p>' if block.advice else "",
        "</article>",
    ]
    return "\n".join(p for p in parts if p)


def _where(block: Block) -> str:
    if block.kind == "gc":
        trigger = (f"; it began at <code>{_e(_site_name(block.gc_trigger))}</code>"
                   if block.gc_trigger else "")
        return (f'<p class="where"><strong>{_e(block.function or "garbage collection")}'
                f"</strong>: {_e(duration(block.gc_time))} of {_e(duration(block.duration))} "
                "in the garbage collector, which runs at whatever line allocates "
                f"next{trigger}</p>")
    if block.mostly_gc:
        here = f" (here <code>{_e(_site_name(block.site))}</code>)" if block.site else ""
        return (f'<p class="where"><strong>mostly a GC pause</strong>: '
                f"{_e(duration(block.gc_time))} of {_e(duration(block.duration))} in the "
                f"garbage collector, which runs at whatever line allocates next{here}</p>")
    if not block.site:
        why = (": the watchdog could not look at the loop while it was blocked"
               if block.source == "none" else "")
        return f'<p class="where"><strong>no stack captured</strong>{_e(why)}</p>'
    deadman = (' <span class="muted">(stack dumped by faulthandler during a C call)</span>'
               if block.source == "deadman" else "")
    return (f'<p class="where"><code>{_e(_site_name(block.site))}</code> in '
            f"<code>{_e(block.function or '?')}</code>{deadman}</p>")


def _source(block: Block) -> str:
    """The lines around the block's site, its own marked; nothing when the file is unreadable.

    Shown for a GC pause too (where the console leaves it out): the page says
    above it that the collector runs at whatever line allocates, and the line
    that allocated is still a lead. A block of kind ``gc`` shows the line that
    was running when the collection began (its trigger).
    """
    frame = _lead_frame(block)
    if frame is None or frame.line <= 0:
        return ""
    first = max(1, frame.line - _CONTEXT)
    lines = [linecache.getline(frame.file, n) for n in range(first, frame.line + _CONTEXT + 1)]
    if not lines[frame.line - first].strip():
        return ""  # the file is gone, or changed since the report was made
    while not lines[-1].strip():
        lines.pop()
    while not lines[0].strip():
        lines.pop(0)
        first += 1
    texts = tuple(_dedent([line.rstrip("\r\n") for line in lines]))
    rows = []
    for offset, code in enumerate(_highlight(texts)):
        number = first + offset
        hit = " hit" if number == frame.line else ""
        rows.append(f'<span class="line{hit}"><span class="ln">{number}</span>{code}</span>')
    return f'<pre class="source">{"".join(rows)}</pre>'


def _lead_frame(block: Block) -> Frame | None:
    if block.kind == "gc":
        return next((f for f in reversed(block.frames) if f.location == block.gc_trigger), None)
    return block.user_frame


def _dedent(lines: list[str]) -> list[str]:
    # the same indentation on every line says nothing; drop it (as the console does)
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return [line[cut:] for line in lines]


_TOKEN_CLASSES = (
    (Token.Comment, "tc"),
    (Token.Literal.String, "ts"),
    (Token.Literal.Number, "tm"),
    (Token.Keyword, "tk"),
    (Token.Operator.Word, "tk"),
    (Token.Name.Builtin, "tb"),
    (Token.Name.Function, "tf"),
    (Token.Name.Class, "tf"),
)


@functools.lru_cache(maxsize=256)  # blocks at one site show the same lines
def _highlight(lines: tuple[str, ...]) -> tuple[str, ...]:
    """Python source lines as escaped HTML, with classes for keywords, strings, comments."""
    out: list[str] = [""]
    lexer = PythonLexer(stripnl=False, ensurenl=True)
    for token_type, value in lex("\n".join(lines), lexer):
        css = next((c for t, c in _TOKEN_CLASSES if token_type in t), None)
        for index, piece in enumerate(str(value).split("\n")):
            if index:
                out.append("")
            if piece:
                escaped = _e(piece)
                out[-1] += f'<span class="{css}">{escaped}</span>' if css else escaped
    return tuple(out[: len(lines)])


def _frame_item(frame: Frame, *, user: bool, site: bool) -> str:
    css = "site" if site else "user" if user else "lib"
    marker = "❱" if site else ""
    return (f'<li class="{css}"><span class="mk">{marker}</span>'
            f"{_e(_path(frame.file))}:{_e(frame.line)} <span class=\"in\">in</span> "
            f"{_e(frame.function)}</li>")


def _fold(frames: Sequence[Frame], summary: str, is_user: UserCode) -> str:
    items = "".join(_frame_item(f, user=is_user(f.file), site=False) for f in frames)
    return f"<li><details><summary>{_e(summary)}</summary><ol>{items}</ol></details></li>"


def _library_summary(folded: Folded) -> str:
    return f"… {plural(len(folded.frames), 'library frame')} ({', '.join(folded.modules)})"


def _stack(block: Block, is_user: UserCode) -> str:
    """The stack, innermost last: the callback the loop ran, down to the block.

    Laid out as in the console report (:mod:`loopwatch._stackview`); here each
    fold opens on a click, and the frames that started the loop
    (``asyncio.run``, the loop's own machinery) are one more fold on top.
    """
    view = stack_view(block, is_user, _INNER_FRAMES)
    if view is None or (view.just_the_site and not view.outer):
        return ""
    items = []
    if view.outer:
        items.append(_fold(view.outer, f"… {plural(len(view.outer), 'outer frame')}: where "
                                       "the loop was started", is_user))
    for item in view.items:
        if isinstance(item, Folded):
            items.append(_fold(item.frames, _library_summary(item), is_user))
        else:
            items.append(_frame_item(item.frame, user=item.user, site=item.site))
    return f'<ol class="stack" title="innermost last">{"".join(items)}</ol>'


def _other_stacks(block: Block, is_user: UserCode) -> str:
    if len(block.stacks) <= 1:
        return ""
    main = max(block.stacks, key=lambda s: s.count)
    total = sum(s.count for s in block.stacks)
    others = [s for s in block.stacks if s is not main]
    listed = "".join(_other_stack(stack, total, block.site, is_user) for stack in others)
    return (f'<details class="others"><summary>+ {_e(plural(len(others), "other stack"))} '
            f"in {total - main.count} of {total} samples</summary>{listed}</details>")


def _other_stack(stack: Stack, total: int, site: str | None, is_user: UserCode) -> str:
    frames = stack.frames[callback_start(stack.frames):]
    items = "".join(
        _frame_item(f, user=is_user(f.file), site=f.location == site) for f in frames
    )
    return (f'<div class="muted">{_e(stack.count)} of {_e(total)} samples</div>'
            f'<ol class="stack">{items}</ol>')


def _profile_line(functions: Sequence[FunctionStat], limit: int = 4) -> str:
    # functions that only passed the time on to others are in the stack already
    heavy = [f for f in functions if f.own >= 0.0005][:limit]
    if not heavy:
        return ""
    named = ", ".join(f"<code>{_e(f.name)}</code> {_e(duration(f.own))}" for f in heavy)
    return f'<p class="profile">profile: {named}</p>'


# -- tables ---------------------------------------------------------------------------


def _th(name: str, kind: str, *, numeric: bool = False, sorted_as: str = "") -> str:
    css = ' class="n"' if numeric else ""
    initial = f' data-sorted="{sorted_as}"' if sorted_as else ""
    return f'<th{css} data-type="{kind}"{initial} scope="col">{_e(name)}</th>'


def _num(value: float | None, shown: str, css: str = "") -> str:
    # the raw value sorts; a missing one sorts below every real one
    raw = -1.0 if value is None else value
    return f'<td class="{f"n {css}".strip()}" data-v="{raw:.9g}">{_e(shown)}</td>'


def _table(table_id: str, head: Iterable[str], rows: Iterable[str],
           row_ids: Sequence[str] = ()) -> str:
    ids = [f' id="{_e(row_id)}"' for row_id in row_ids]
    body = "".join(f'<tr data-i="{i}"{ids[i] if ids else ""}>{row}</tr>'
                   for i, row in enumerate(rows))
    return (f'<div class="card table-card"><table class="sortable" id="{table_id}">'
            f'<thead><tr>{"".join(head)}</tr></thead><tbody>{body}</tbody></table></div>')


def _sites(report: Report) -> str:
    if not report.sites:
        return ""
    cuts_known = report.cuts_known
    threshold = duration(report.threshold)
    head = [
        _th("site", "text"),
        _th("count", "num", numeric=True),
        _th("total", "num", numeric=True, sorted_as="descending"),
        _th("p95", "num", numeric=True),
        _th("max", "num", numeric=True),
        _th("CPU", "num", numeric=True),
        _th("GIL held", "num", numeric=True),
    ]
    rows = []
    for site in report.sites:
        function = f' <span class="muted">in {_e(site.function)}</span>' if site.function else ""
        cell = [f'<div class="site-name">{_e(_site_name(site.site))}{function}</div>']
        short = site.count - site.blocks
        if cuts_known and short >= _MANY_CUTS:
            over = f"{site.blocks} over" if site.blocks else "none over"
            cell.append(f'<div class="line2 cuts">thousand cuts: {short} short blocks, '
                        f"{_e(over)} {_e(threshold)}</div>")
        elif cuts_known and short:
            iterations = "iteration" if short == 1 else "iterations"
            cell.append(f'<div class="line2 cuts">{short} slow {iterations} under '
                        f"{_e(threshold)}</div>")
        if site.requests:
            cell.append(f'<div class="line2 reqs">for {_e(", ".join(site.requests))}</div>')
        if site.advice:
            cell.append(f'<div class="line2 tip">→ {_e(site.advice)}</div>')
        rows.append(
            f'<td data-v="{_e(_site_name(site.site).lower())}">{"".join(cell)}</td>'
            + _num(site.count, f"{site.count:,}")
            + _num(site.total, duration(site.total))
            + _num(site.p95, duration(site.p95))
            + _num(site.max, duration(site.max))
            + _num(site.cpu_ratio, percent(site.cpu_ratio), f"kind-cell {_kind_class(site.kind)}")
            + _num(site.gil_held, percent(site.gil_held))
        )
    title = _heading("sites", "Sites", f"{len(report.sites)}, by total time")
    return title + "\n" + _table("sites-table", head, rows)


def _calls(report: Report) -> str:
    groups = report.call_sites()
    if not groups:
        return ""
    example: dict[tuple[str, str | None, str | None], BlockingCall] = {}
    for call in report.calls:
        example.setdefault((call.call, call.site, call.function), call)
    head = [
        _th("count", "num", numeric=True, sorted_as="descending"),
        _th("call", "text"),
        _th("site", "text"),
        _th("function", "text"),
        _th("for example", "text"),
    ]
    rows = []
    for name, site, function, count in groups:
        first = example[(name, site, function)]
        task = f" (task {first.task})" if first.task else ""
        rows.append(
            _num(count, f"{count:,}")
            + f'<td><code>{_e(name)}</code></td>'
            + f'<td><span class="site-name">{_e(_site_name(site))}</span></td>'
            + f"<td><code>{_e(function or '?')}</code></td>"
            + f'<td class="muted"><code>{_e(first.detail)}</code>{_e(task)}</td>'
        )
    title = _heading("calls", "Blocking calls on a loop's thread",
                     f"strict mode, {plural(len(report.calls), 'call')}")
    return title + "\n" + _table("calls-table", head, rows)


def _functions(functions: Sequence[FunctionStat]) -> str:
    if not functions:
        return ""
    head = [
        _th("function", "text"),
        _th("own", "num", numeric=True, sorted_as="descending"),
        _th("total", "num", numeric=True),
        _th("calls", "num", numeric=True),
        _th("where", "text"),
    ]
    rows = []
    for stat in functions:
        where = _path(stat.file) + (f":{stat.line}" if stat.line > 0 else "")
        rows.append(
            f"<td><code>{_e(stat.name)}</code></td>"
            + _num(stat.own, duration(stat.own))
            + _num(stat.total, duration(stat.total))
            + _num(stat.calls, f"{stat.calls:,}")
            + f'<td class="muted"><code>{_e(where)}</code></td>'
        )
    title = _heading("functions", "Functions", "profile mode, by own time")
    return title + "\n" + _table("functions-table", head, rows)


def _stalls(report: Report, numbers: dict[int, int]) -> str:
    """Stalls: long iterations the machine caused. Per cause, then one row each."""
    if not report.stalls:
        return ""
    causes = [
        _stat(_cause_label(cause), _e(count), _e(f"longest {duration(longest)}: "
                                                  f"{STALL_CAUSE.get(cause, cause)}"))
        for cause, count, longest in report.stalls_by_cause()
    ]
    processes = len({s.pid for s in report.stalls}) > 1
    throttling = any(s.throttled for s in report.stalls)
    head = [
        _th("when", "num", numeric=True, sorted_as="ascending"),
        _th("loop", "text"),
        _th("duration", "num", numeric=True),
        _th("cause", "text"),
        _th("run-queue delay", "num", numeric=True),
        _th("paused", "num", numeric=True),
    ]
    if throttling:
        head.append(_th("throttled", "num", numeric=True))
    head.append(_th("the loop was running", "text"))
    order = sorted(numbers, key=lambda index: numbers[index])
    rows, ids = [], []
    for index in order:
        stall = report.stalls[index]
        loop = f"pid {stall.pid} {stall.loop}" if processes else stall.loop
        row = (
            _num(stall.started, _clock(stall.started)[11:])
            + f'<td><span class="mono">{_e(loop)}</span></td>'
            + _num(stall.duration, duration(stall.duration))
            + f'<td class="cause">{_e(_cause_label(stall.cause))}</td>'
            + _num(stall.queued, duration(stall.queued))
            + _num(stall.paused, duration(stall.paused) if stall.paused else "-")
        )
        if throttling:
            row += _num(stall.throttled, duration(stall.throttled) if stall.throttled else "-")
        row += f'<td class="muted">{_e(_stall_running(stall) or "-")}</td>'
        rows.append(row)
        ids.append(_stall_anchor(numbers[index]))
    title = _heading("stalls", "Stalls", f"{len(report.stalls)}, not counted as blocks")
    return "\n".join([
        title,
        f'<p class="explain">Long iterations that were not the program\'s doing: '
        f"{_e(STALL_MEANING)}. They are in no block and no site.</p>",
        f'<section class="cards">{"".join(causes)}</section>',
        _table("stalls-table", head, rows, ids),
    ])
