"""The plugin's words: failure messages, report sections and the terminal summary.

Reads what :class:`~loopwatch._pytest.results.Results` and the blocks hold;
computes nothing of its own.
"""

from __future__ import annotations

import linecache
from pathlib import Path
from typing import Any

from loopwatch._format import milliseconds, short_path
from loopwatch._pytest.results import Results
from loopwatch._pytest.settings import TestRules
from loopwatch._pytest.windows import Seen, SeenCall
from loopwatch.model import Frame

#: Blocks shown in one failure message, and sites in the terminal summary.
MAX_SHOWN_BLOCKS = 5
MAX_SHOWN_SITES = 10
#: Stack frames shown for one block (innermost ones).
MAX_SHOWN_FRAMES = 12

_LOOP_FUNCTIONS = frozenset({"_run", "_run_once", "run_forever", "run_until_complete"})


def group_calls(calls: list[SeenCall]) -> list[list[SeenCall]]:
    """Blocking calls grouped by (call, line), in the order each was first made."""
    groups: dict[tuple[str, str | None], list[SeenCall]] = {}
    for seen in calls:
        groups.setdefault((seen.call.call, seen.call.site), []).append(seen)
    return list(groups.values())


def loop_inner_frames(stack: tuple[Frame, ...]) -> list[Frame]:
    """A stack from where the event loop called in: the frames outside are noise."""
    frames = list(stack)
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
        return short_path(location, str(self.rootpath)) + sep + line

    def failure(self, counted: list[Seen], calls: list[SeenCall], threshold: float) -> str:
        """The message of a test that failed for its blocks, its blocking calls, or both."""
        parts = []
        if counted:
            parts.append(self._blocks_failure(counted, threshold))
        if calls:
            parts.append(self._calls_failure(calls))
        return "\n".join(parts)

    def _blocks_failure(self, counted: list[Seen], threshold: float) -> str:
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

    def _calls_failure(self, calls: list[SeenCall]) -> str:
        # The first line is what `-r` short summaries show: the call and its line first.
        first = calls[0].call
        at = f" at {self.short(first.site)}" if first.site else ""
        more = f" and {len(calls) - 1} more blocking call(s)" if len(calls) > 1 else ""
        head = (
            f"loopwatch: {first.call}{at}{more} on the event loop's thread (strict mode)"
        )
        return head + "\n" + self.calls(calls) + "\n" + self.how_to_allow(calls[0])

    def how_to_allow(self, seen: SeenCall) -> str:
        call = seen.call
        place = self.short(call.site).rpartition(":")[0] if call.site else None
        pattern = f"'{place}:{call.function}'" if place and call.function else "a pattern"
        return "\n".join([
            "  to accept it, either:",
            "    - move it off the loop: await asyncio.to_thread(...)",
            "    - mark the test @pytest.mark.loopwatch(allow=True)",
            f"    - add {pattern} to the ini option loopwatch_allow",
            "    - record what the suite does today: --loopwatch-baseline PATH "
            "--loopwatch-update-baseline",
        ])

    def calls(self, calls: list[SeenCall], shown: int = MAX_SHOWN_BLOCKS) -> str:
        """Blocking calls grouped by call and line, each group with its first one's stack."""
        lines: list[str] = []
        groups = group_calls(calls)
        for group in groups[:shown]:
            seen = group[0]
            call = seen.call
            times = f" x{len(group)}" if len(group) > 1 else ""
            detail = f"({call.detail})" if call.detail else ""
            where = self.short(call.site) if call.site else "<no stack captured>"
            task = f" [task {call.task}]" if call.task else ""
            excuse = f" ({seen.excuse})" if seen.excuse else ""
            lines.append(
                f"{call.call}{detail}{times} in {seen.where}: {where} in "
                f"{call.function or '?'}{task}{excuse}"
            )
            lines.extend(self._stack(call.frames, call.site))
        if len(groups) > shown:
            lines.append(f"... and {len(groups) - shown} more blocking call site(s)")
        return "\n".join(lines)

    def warning_call(self, nodeid: str, group: list[SeenCall]) -> str:
        call = group[0].call
        times = f" ({len(group)} times)" if len(group) > 1 else ""
        return (
            f"loopwatch: {nodeid} made a blocking call on the event loop's thread "
            f"(strict mode): {call.call}{times} in {group[0].where}"
            + (f" at {self.short(call.site)} in {call.function}" if call.site else "")
        )

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
        excuse = f" ({seen.excuse})" if seen.excuse else ""
        lines = [
            f"{milliseconds(block.duration)}{accuracy} in {seen.where}: {where} in "
            f"{block.function or '?'} [{block.kind}{ratio}{task}]{excuse}"
        ]
        lines.extend(self._stack(block.frames, block.site))
        if block.advice:
            lines.append(f"  advice: {block.advice}")
        return lines

    def _stack(self, stack: tuple[Frame, ...], site: str | None) -> list[str]:
        """The source line of ``site``, then the stack from where the loop called in."""
        lines: list[str] = []
        frame = next((f for f in reversed(stack) if f.location == site), None)
        if frame is not None:
            source = linecache.getline(frame.file, frame.line).strip()
            if source:
                lines.append(f"    {source}")
        frames = loop_inner_frames(stack)
        if frames:
            lines.append("  stack (innermost last):")
            if len(frames) > MAX_SHOWN_FRAMES:
                lines.append(f"    ... {len(frames) - MAX_SHOWN_FRAMES} outer frame(s)")
                frames = frames[-MAX_SHOWN_FRAMES:]
            for f in frames:
                mark = "  <-" if frame is not None and f == frame else ""
                lines.append(f"    {self.short(f.location)} in {f.function}{mark}")
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
        if results.strict:
            self._calls_summary(tr, results)
        self._baseline_summary(tr, results)
        for event in dict.fromkeys(results.events):
            tr.write_line(f"loopwatch: note: {event}")
        for message in results.errors:
            tr.write_line(f"loopwatch: {message}", yellow=True)

    def _calls_summary(self, tr: Any, results: Results) -> None:
        sites = results.call_sites()
        if sites:
            tr.write_sep("=", "loopwatch: blocking calls on the event loop's thread", yellow=True)
            shown = sites[:MAX_SHOWN_SITES]
            width = max(len(site.call) for site in shown)
            tr.write_line(f"{'count':>6} {'counted':>8}  {'call':<{width}}  site")
            for site in shown:
                tests = site.tests
                who = (tests[0] + (f" (+{len(tests) - 1} more)" if len(tests) > 1 else "")
                       if tests else "outside tests")
                tr.write_line(
                    f"{site.count:>6} {site.counted:>8}  {site.call:<{width}}  "
                    f"{self.short(site.site)} in {site.function or '?'} - {who}"
                )
            if len(sites) > MAX_SHOWN_SITES:
                tr.write_line(f"  ... and {len(sites) - MAX_SHOWN_SITES} more call sites")
        counted = sum(site.counted for site in sites)
        tr.write_line(
            f"loopwatch: strict mode: {results.call_count} blocking call(s) in "
            f"{results.tests_with_calls} of {results.tests_run} test(s), "
            f"{counted} counted against their test",
            bold=bool(counted),
        )

    def _baseline_summary(self, tr: Any, results: Results) -> None:
        if results.baseline_written is not None:
            tr.write_line(
                f"loopwatch: baseline written to {results.baseline_written}: "
                f"{len(results.found)} finding(s)"
            )
            return
        stale = results.stale()
        if stale:
            tr.write_line(
                f"loopwatch: {len(stale)} baseline entr{'y' if len(stale) == 1 else 'ies'} "
                "not seen in this run (stale: after a full run, --loopwatch-update-baseline "
                "drops them):",
                yellow=True,
            )
            for key in stale[:MAX_SHOWN_SITES]:
                tr.write_line(f"  {key.describe()}")
            if len(stale) > MAX_SHOWN_SITES:
                tr.write_line(f"  ... and {len(stale) - MAX_SHOWN_SITES} more")
