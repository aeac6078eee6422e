"""How durations and file names are written for a person: one place, so every output agrees."""

from __future__ import annotations

import functools
import os
import sysconfig
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopwatch.model import Block, Report


def milliseconds(seconds: float, decimals: int = 0) -> str:
    """``1,234 ms``-style, with ``decimals`` digits after the point.

    >>> milliseconds(0.15), milliseconds(0.0123, 1)
    ('150 ms', '12.3 ms')
    """
    return f"{seconds * 1000:,.{decimals}f} ms"


def duration(seconds: float) -> str:
    """Milliseconds below a second, then seconds: short enough for a table cell."""
    if seconds >= 10:
        return f"{seconds:,.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return milliseconds(seconds, 0 if seconds >= 0.1 else 1)


@functools.cache
def _stdlib() -> str:
    # sysconfig works it out anew on each call: a report of a thousand blocks of
    # twenty frames would spend seconds here
    return sysconfig.get_paths().get("stdlib", "")


def short_path(path: str, root: str | None = None) -> str:
    """A file name as a person wants to read it: relative to ``root`` (default: here),
    or to site-packages, or to the standard library."""
    if path.startswith("<"):
        return path
    try:
        relative = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        relative = path
    if not relative.startswith(".." + os.sep):
        return relative
    for marker in ("site-packages", "dist-packages"):
        index = path.find(os.sep + marker + os.sep)
        if index >= 0:
            return path[index + len(marker) + 2:]
    lib = _stdlib()
    if lib and path.startswith(lib + os.sep):
        return path[len(lib) + 1:]
    return path


def short_site(site: str | None) -> str:
    if not site:
        return "<no stack captured>"
    path, _, line = site.rpartition(":")
    return f"{short_path(path)}:{line}" if path else site


#: A block's GC time is mentioned when it is at least this share of the block.
NOTABLE_GC = 0.1


def block_facts(block: Block) -> list[str]:
    """How a block spent its time, in words: ``CPU 97%``, ``GIL held 100%``, ``GC 259 ms``."""
    facts = []
    if block.cpu_ratio is not None:
        facts.append(f"CPU {block.cpu_ratio:.0%}")
    if block.gil_held is not None:
        facts.append("GIL released" if block.gil_released else f"GIL held {block.gil_held:.0%}")
    if block.gc_time > 0 and block.gc_time >= NOTABLE_GC * block.duration and block.kind != "gc":
        facts.append(f"GC {duration(block.gc_time)}")
    if block.stalled >= NOTABLE_STALL * block.duration:
        facts.append(f"not run by the machine {duration(block.stalled)}")
    return facts


#: A block's time not run by the machine is mentioned when it is at least this share.
NOTABLE_STALL = 0.05

#: Why a loop's thread was not run, for a person.
STALL_CAUSE = {
    "starved": "the machine did not run the loop's thread (CPU contention)",
    "throttled": "the process's CPU quota ran out (its cgroup was throttled)",
    "paused": "the process was stopped (SIGSTOP, a frozen container, a paused VM)",
}


#: The same causes in a few words, for a table cell or a label.
STALL_CAUSE_SHORT = {
    "starved": "CPU contention",
    "throttled": "CPU quota ran out",
    "paused": "process stopped",
}

#: What a stall is, in one sentence, for outputs that show stalls beside blocks.
STALL_MEANING = ("the machine did not run the loop's thread: not your code, "
                 "and not counted as blocks")

#: What a start-up block is (``Block.phase == "startup"``).
STARTUP_MEANING = "before the loop served anything: imports, a lifespan's start"


def stall_lines(report: Report) -> list[str]:
    """One line per cause of the report's stalls: long iterations that were not the code's."""
    return [
        f"{STALL_CAUSE.get(cause, cause)} for up to {duration(longest)}, "
        f"{plural(count, 'time')}: not your code, and not counted as blocks"
        for cause, count, longest in report.stalls_by_cause()
    ]


def block_who(block: Block) -> list[str]:
    """What the block ran for: the request, the task and its coroutine, the callback."""
    who = []
    if block.request:
        who.append(block.request)
    if block.task:
        coroutine = f" · {block.coroutine}()" if block.coroutine else ""
        who.append(f"task {block.task}{coroutine}")
    elif block.coroutine:
        who.append(f"coroutine {block.coroutine}()")
    if block.callback:
        who.append(f"callback {block.callback}")
    return who


def report_notes(report: Report) -> list[str]:
    """What a reader of a report should also know: its events, and what was not kept."""
    notes = list(report.events)
    if report.dropped_blocks:
        notes.append(f"{report.dropped_blocks} older block(s) were not kept (max_blocks); "
                     "the sites table still counts them")
    if report.dropped_calls:
        notes.append(f"{report.dropped_calls} older blocking call(s) were not kept (max_blocks)")
    return notes


#: How each kind of block is named for a person.
KIND_LABEL = {"cpu": "computing", "wait": "waiting", "mixed": "computing and waiting",
              "gc": "garbage collection"}


def percent(ratio: float | None) -> str:
    """``42%``, or ``-`` when not known."""
    return "-" if ratio is None else f"{ratio:.0%}"


def plural(count: int, word: str) -> str:
    """``1 block``, ``2 blocks``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
