"""The plugin's words: failure messages, report sections and the terminal summary.

Reads what :class:`~loopwatch._pytest.results.Results` and the blocks hold;
computes nothing of its own.
"""

from __future__ import annotations

import linecache
import os
import sysconfig
from pathlib import Path
from typing import Any

from loopwatch._format import milliseconds
from loopwatch._pytest.results import Results
from loopwatch._pytest.settings import TestRules
from loopwatch._pytest.windows import Seen
from loopwatch.model import Block, Frame

#: Blocks shown in one failure message, and sites in the terminal summary.
MAX_SHOWN_BLOCKS = 5
MAX_SHOWN_SITES = 10
#: Stack frames shown for one block (innermost ones).
MAX_SHOWN_FRAMES = 12

_LOOP_FUNCTIONS = frozenset({"_run", "_run_once", "run_forever", "run_until_complete"})


def loop_inner_frames(block: Block) -> list[Frame]:
    """The block's stack from where the event loop called in: the frames outside are noise."""
    frames = list(block.frames)
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        path = frame.file.replace("\\", "/")
        if frame.function in _LOOP_FUNCTIONS and (
            "/asyncio/" in path or "/loopwatch/" in path or "/uvloop/" in path
        ):
            return frames[index + 1 :]
    return frames


class Renderer:
    """Writes blocks for one run, with paths relative to its rootdir."""

    def __init__(self, rootpath: Path) -> None:
        self.rootpath = rootpath

    def short(self, path: str | None) -> str:
        """A path relative to the rootdir when it is under it, else shortened."""
        if not path:
            return "<unknown>"
        location, sep, line = path.rpartition(":")
        if not sep or not line.isdigit():
            location, sep, line = path, "", ""
        try:
            relative = os.path.relpath(location, self.rootpath)
        except ValueError:
            relative = location
        if relative.startswith(".."):
            relative = location
            marker = "site-packages" + os.sep
            stdlib = sysconfig.get_paths().get("stdlib", "") + os.sep
            if marker in location:
                relative = "..." + os.sep + location.split(marker, 1)[1]
            elif stdlib != os.sep and location.startswith(stdlib):
                relative = "<stdlib>" + os.sep + location[len(stdlib):]
        return relative + sep + line

    def failure(self, counted: list[Seen], threshold: float) -> str:
        # The first line is what `-r` short summaries show: duration and line first.
        worst = max(counted, key=lambda s: s.block.duration)
        at = f" at {self.short(worst.block.site)}" if worst.block.site else ""
        if len(counted) == 1:
            head = (
                f"loopwatch: blocked the event loop for {milliseconds(worst.block.duration)}"
                f"{at} (threshold {milliseconds(threshold)})"
            )
        else:
            head = (
                f"loopwatch: blocked the event loop {len(counted)} times, longest "
                f"{milliseconds(worst.block.duration)}{at} (threshold {milliseconds(threshold)})"
            )
        return head + "\n" + self.blocks(counted, None)

    def warning(self, nodeid: str, seen: Seen, threshold: float) -> str:
        block = seen.block
        return (
            f"loopwatch: {nodeid} blocked the event loop for {milliseconds(block.duration)} "
            f"(threshold {milliseconds(threshold)}) in {seen.where}"
            + (f" at {self.short(block.site)} in {block.function}" if block.site else "")
        )

    def blocks(self, seen: list[Seen], rules: TestRules | None) -> str:
        lines: list[str] = []
        if rules is not None and rules.allow:
            lines.append("(allowed by @pytest.mark.loopwatch(allow=True))")
        for item in seen[:MAX_SHOWN_BLOCKS]:
            lines.extend(self._block(item))
        if len(seen) > MAX_SHOWN_BLOCKS:
            lines.append(f"... and {len(seen) - MAX_SHOWN_BLOCKS} more block(s)")
        return "\n".join(lines)

    def _block(self, seen: Seen) -> list[str]:
        block = seen.block
        where = self.short(block.site) if block.site else "<no stack captured>"
        ratio = f", cpu {block.cpu_ratio:.0%}" if block.cpu_ratio is not None else ""
        task = f", task {block.task}" if block.task else ""
        accuracy = " (uvloop: to within one heartbeat)" if block.resolution == "heartbeat" else ""
        lines = [
            f"{milliseconds(block.duration)}{accuracy} in {seen.where}: {where} in "
            f"{block.function or '?'} [{block.kind}{ratio}{task}]"
        ]
        frame = block.user_frame
        if frame is not None:
            source = linecache.getline(frame.file, frame.line).strip()
            if source:
                lines.append(f"    {source}")
        frames = loop_inner_frames(block)
        if frames:
            lines.append("  stack (innermost last):")
            if len(frames) > MAX_SHOWN_FRAMES:
                lines.append(f"    ... {len(frames) - MAX_SHOWN_FRAMES} outer frame(s)")
                frames = frames[-MAX_SHOWN_FRAMES:]
            for f in frames:
                mark = "  <-" if frame is not None and f == frame else ""
                lines.append(f"    {self.short(f.location)} in {f.function}{mark}")
        if block.advice:
            lines.append(f"  advice: {block.advice}")
        return lines

    def summary(self, tr: Any, results: Results) -> None:
        """The terminal summary: the worst sites, then one line of totals, notes and errors."""
        sites = results.sites()
        if sites:
            tr.write_sep("=", "loopwatch: worst blocking sites", yellow=True)
            tr.write_line(f"{'count':>6} {'total':>10} {'max':>10}  site")
            for site in sites[:MAX_SHOWN_SITES]:
                tests = results.tests_at(site.site)
                who = (tests[0] + (f" (+{len(tests) - 1} more)" if len(tests) > 1 else "")
                       if tests else "outside tests")
                tr.write_line(
                    f"{site.count:>6} {milliseconds(site.total):>10} "
                    f"{milliseconds(site.max):>10}  "
                    f"{self.short(site.site)} in {site.function or '?'} ({site.kind}) - {who}"
                )
            if len(sites) > MAX_SHOWN_SITES:
                tr.write_line(f"  ... and {len(sites) - MAX_SHOWN_SITES} more sites")
        threshold = milliseconds(results.threshold)
        if not results.watched:
            tr.write_line("loopwatch: nothing was watched", yellow=True)
        elif results.blocks:
            failed = sum(1 for v in results.flagged.values() if v == "failed")
            warned = sum(1 for v in results.flagged.values() if v == "warned")
            verdict = (f"; {failed} test(s) failed" if failed else "") + (
                f"; {warned} test(s) warned" if warned else ""
            )
            tr.write_line(
                f"loopwatch: {results.blocks} block(s) over {threshold} "
                f"in {results.tests_with_blocks} of {results.tests_run} test(s), "
                f"{milliseconds(results.blocked_total)} blocked in total{verdict} "
                f"(mode {results.mode})",
                bold=True,
            )
        else:
            tr.write_line(f"loopwatch: no blocks over {threshold} in {results.tests_run} test(s)")
        for event in dict.fromkeys(results.events):
            tr.write_line(f"loopwatch: note: {event}")
        for message in results.errors:
            tr.write_line(f"loopwatch: {message}", yellow=True)
