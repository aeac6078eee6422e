"""Exports for flame-graph tools: speedscope JSON and collapsed ("folded") stacks.

Like the console renderer, these only reformat a :class:`~loopwatch.model.Report`:
each block's sampled stacks (``Block.stacks``, with their sample counts) become
a flame graph of where that block spent its time.

>>> from loopwatch.model import Block, Frame, Report, Stack
>>> frames = (Frame("app.py", 3, "main"), Frame("app.py", 9, "parse"))
>>> block = Block(id=1, loop="loop#1", started=0.0, duration=0.2, cpu_ratio=1.0,
...               kind="cpu", frames=frames, site="app.py:9", function="parse",
...               samples=4, stacks=(Stack(frames, 4),))
>>> print(to_collapsed(Report(threshold=0.1, blocks=(block,))), end="")
main (app.py:3);parse (app.py:9) 200000
>>> to_speedscope(Report(threshold=0.1, blocks=(block,)))["profiles"][0]["weights"]
[200.0]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from os import PathLike
from typing import Any, Literal

from loopwatch._format import short_path, short_site
from loopwatch.model import Block, Frame, Report

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

#: Shown as the only frame of a block whose stack could not be taken, so that
#: its time still shows up in the flame graph instead of vanishing.
NO_STACK = Frame("<unknown>", 0, "<no stack captured>")

Weight = Literal["time", "samples"]


def _weighted_stacks(block: Block) -> Iterator[tuple[tuple[Frame, ...], int, float]]:
    """Each distinct stack of a block with its sample count and its share of the duration.

    The block's duration is split between its stacks in proportion to their
    sample counts, so a block sampled once (a faulthandler dump) weighs as much
    as one sampled a hundred times: what matters is how long the loop was stuck.
    """
    stacks = [(s.frames or (NO_STACK,), s.count) for s in block.stacks if s.count > 0]
    if not stacks:
        stacks = [(block.frames or (NO_STACK,), max(block.samples, 1))]
    total = sum(count for _, count in stacks)
    for frames, count in stacks:
        yield frames, count, block.duration * count / total


def _profile_name(block: Block) -> str:
    where = f"{block.function or '?'} ({short_site(block.site)})" if block.site else "no stack"
    task = f", task {block.task}" if block.task else ""
    return f"#{block.id} {block.duration * 1000:.1f} ms {block.kind} in {where}{task}"


def to_speedscope(report: Report, *, name: str = "loopwatch") -> dict[str, Any]:
    """The report as a speedscope file: one sampled profile per block, weights in ms.

    Open the written file at speedscope.app or with the ``speedscope`` CLI.
    Samples are stacks of indices into ``shared.frames``, outermost first, and
    each weight is the block time that stack accounts for, in milliseconds.

    >>> to_speedscope(Report(threshold=0.1))["profiles"]
    []
    """
    frames: list[dict[str, Any]] = []
    index: dict[Frame, int] = {}

    def frame_index(frame: Frame) -> int:
        found = index.get(frame)
        if found is None:
            found = index[frame] = len(frames)
            entry: dict[str, Any] = {"name": frame.function or "?", "file": frame.file}
            if frame.line > 0:
                entry["line"] = frame.line
            frames.append(entry)
        return found

    profiles = []
    for block in sorted(report.blocks, key=lambda b: b.id):
        samples, weights = [], []
        for stack, _count, seconds in _weighted_stacks(block):
            samples.append([frame_index(f) for f in stack])
            weights.append(round(seconds * 1000, 6))
        profiles.append({
            "type": "sampled",
            "name": _profile_name(block),
            "unit": "milliseconds",
            "startValue": 0,
            "endValue": round(block.duration * 1000, 6),
            "samples": samples,
            "weights": weights,
        })
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "loopwatch",
    }


def write_speedscope(report: Report, path: str | PathLike[str]) -> None:
    """Write :func:`to_speedscope` to ``path`` (conventionally ``*.speedscope.json``).

    >>> write_speedscope(Report(threshold=0.1), "/dev/null")
    """
    with open(path, "w", encoding="utf-8") as out:
        json.dump(to_speedscope(report), out)
        out.write("\n")


def _label(frame: Frame) -> str:
    # ';' separates frames and the last space separates the count: keep both out
    name = (frame.function or "?").replace(";", ":")
    where = short_path(frame.file).replace(";", ":")
    return f"{name} ({where}:{frame.line})" if frame.line > 0 else f"{name} ({where})"


def to_collapsed(report: Report, *, weight: Weight = "time") -> str:
    """The report's stacks as folded lines ``outer;...;inner weight``, summed over blocks.

    flamegraph.pl, inferno-flamegraph and speedscope read this format. With
    ``weight="time"`` (the default) each line weighs the microseconds of
    blocked time it accounts for, so blocks compare by how long they blocked
    whatever their sampling; ``weight="samples"`` gives raw sample counts.

    >>> to_collapsed(Report(threshold=0.1))
    ''
    """
    if weight not in ("time", "samples"):
        raise ValueError(f"weight must be 'time' or 'samples', not {weight!r}")
    totals: dict[str, float] = {}
    for block in report.blocks:
        for stack, count, seconds in _weighted_stacks(block):
            line = ";".join(_label(f) for f in stack)
            totals[line] = totals.get(line, 0) + (seconds * 1e6 if weight == "time" else count)
    lines = [f"{stack} {round(value)}" for stack, value in totals.items() if round(value) > 0]
    return "".join(line + "\n" for line in lines)


def write_collapsed(
    report: Report, path: str | PathLike[str], *, weight: Weight = "time"
) -> None:
    """Write :func:`to_collapsed` to ``path``.

    >>> write_collapsed(Report(threshold=0.1), "/dev/null")
    """
    with open(path, "w", encoding="utf-8") as out:
        out.write(to_collapsed(report, weight=weight))
