"""Rendering a Report for people. Renderers only format: every number comes from the model."""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import TextIO

from loopwatch.model import Block, Report


def short_path(path: str) -> str:
    """A file name as a person wants to read it: relative to here, or to site-packages."""
    if path.startswith("<"):
        return path
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        relative = path
    if not relative.startswith(".." + os.sep):
        return relative
    for marker in ("site-packages", "dist-packages"):
        index = path.find(os.sep + marker + os.sep)
        if index >= 0:
            return path[index + len(marker) + 2:]
    lib = sysconfig.get_paths().get("stdlib", "")
    if lib and path.startswith(lib + os.sep):
        return path[len(lib) + 1:]
    return path


def short_site(site: str | None) -> str:
    if not site:
        return "<no stack captured>"
    path, _, line = site.rpartition(":")
    return f"{short_path(path)}:{line}" if path else site


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def block_line(block: Block) -> str:
    """One line for one block: duration, kind, where, function, task."""
    ratio = f" cpu {block.cpu_ratio:.0%}" if block.cpu_ratio is not None else ""
    where = short_site(block.site)
    task = f"  task {block.task}" if block.task else ""
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
            f"{_ms(sum(b.duration for b in report.blocks))} blocked in total"
        ]
        lines += ["  " + block_line(b) for b in report.worst(limit)]
        if count > limit:
            lines.append(f"  ... and {count - limit} more")
    lines += [f"  note: {event}" for event in report.events]
    return "\n".join(lines)


def print_summary(report: Report, file: TextIO | None = None) -> None:
    out = file if file is not None else sys.stderr
    print(render_summary(report), file=out, flush=True)
