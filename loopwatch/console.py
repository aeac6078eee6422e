"""Rendering a Report for people. Renderers only format: every number comes from the model."""

from __future__ import annotations

import sys
from typing import TextIO

from loopwatch.model import Block, Report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def block_line(block: Block) -> str:
    """One line for one block: duration, kind, where, function, task."""
    ratio = f" cpu {block.cpu_ratio:.0%}" if block.cpu_ratio is not None else ""
    where = block.site or "<no stack captured>"
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
