"""The report model: plain data, JSON in and out, and the aggregation over blocks.

Nothing here prints or touches an event loop. Renderers (console, export) read
these objects; the watchdog creates them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from os import PathLike
from typing import Any, Literal, TypeVar

SCHEMA = 1

Kind = Literal["cpu", "wait", "mixed", "unknown", "gc"]

#: Why the loop's thread did not run: it sat runnable while other work had the CPU
#: ("starved"), its cgroup had used its CPU quota ("throttled"), or the whole process
#: was stopped or frozen ("paused").
StallCause = Literal["starved", "throttled", "paused"]

#: ``Block.phase``: before the loop served anything (imports, a lifespan's start), or after.
Phase = Literal["startup", "running"]

#: The site of every block spent mostly in the garbage collector (the line that
#: triggered the collection is ``Block.gc_trigger``).
GC_SITE = "<garbage collection>"

#: cpu_ratio at or above this is CPU-bound, at or below WAIT_RATIO it is waiting.
CPU_RATIO = 0.8
WAIT_RATIO = 0.2


def classify(cpu_ratio: float | None) -> Kind:
    """Name what a block spent its time on, from its CPU-time / wall-time ratio.

    >>> classify(0.97), classify(0.01), classify(0.5)
    ('cpu', 'wait', 'mixed')
    """
    if cpu_ratio is None:
        return "unknown"
    if cpu_ratio >= CPU_RATIO:
        return "cpu"
    if cpu_ratio <= WAIT_RATIO:
        return "wait"
    return "mixed"


def advise(kind: Kind, gil_held: float | None = None, mostly_gc: bool = False) -> str:
    """The one-line fix suggested for a block or site of this kind.

    >>> advise("cpu", gil_held=0.9)
    'CPU-bound, holding the GIL: move it to a worker process with @loopwatch.offload("process")'
    """
    if mostly_gc or kind == "gc":
        return ("a garbage-collection pause: gc.freeze() after start-up, raise "
                "gc.set_threshold(), or make fewer reference cycles")
    if kind == "cpu":
        if gil_held is not None and gil_held < 0.5:
            return ('CPU-bound in C code that releases the GIL: @loopwatch.offload("thread") '
                    "runs it in parallel")
        held = ", holding the GIL" if gil_held is not None else ""
        return f'CPU-bound{held}: move it to a worker process with @loopwatch.offload("process")'
    if kind == "wait":
        return 'waiting: use an async API, or @loopwatch.offload("thread")'
    if kind == "mixed":
        return 'CPU and waiting: @loopwatch.offload("thread"), or split out the CPU part'
    return "no CPU clock for this thread: check the stack"


@dataclass(frozen=True)
class Frame:
    """One stack frame: source file, line number and function name."""

    file: str
    line: int
    function: str

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


_Self = TypeVar("_Self", bound="_Plain")


class _Plain:
    """JSON in and out for a flat dataclass; unknown keys (from a newer schema) are ignored."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[_Self], data: dict[str, Any]) -> _Self:
        known = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class FunctionStat(_Plain):
    """Time spent in one function, from profile mode (yappi): names C functions too."""

    name: str
    file: str
    """Source file, or the module for a C function."""
    line: int
    own: float
    """Seconds in the function itself."""
    total: float
    """Seconds in the function and what it called."""
    calls: int



@dataclass(frozen=True)
class Stack:
    """A distinct stack seen while sampling a block, and how many samples saw it."""

    frames: tuple[Frame, ...]
    """Innermost last."""
    count: int


@dataclass(frozen=True)
class Block:
    """One loop iteration that was busy for longer than the threshold."""

    id: int
    loop: str
    """Which loop: its class, a number, and the thread running it."""
    started: float
    """Wall-clock time (``time.time()``) the iteration began."""
    duration: float
    """Seconds the loop was busy, measured in the loop's own thread."""
    cpu_ratio: float | None
    """CPU time of the loop thread over wall time: ~1 computing, ~0 waiting."""
    kind: Kind
    frames: tuple[Frame, ...]
    """The most-seen stack, innermost last."""
    site: str | None
    """``file:line`` of the innermost frame of user code (where to look)."""
    function: str | None
    """The function containing the site."""
    task: str | None = None
    """Name of the asyncio task that was running, when one was."""
    coroutine: str | None = None
    """Qualified name of that task's coroutine."""
    request: str | None = None
    """The request the task was serving (``GET /users/{id}``), where known."""
    pid: int | None = None
    """The process the loop ran in."""
    callback: str | None = None
    """The callback being run, when known (precise mode)."""
    samples: int = 0
    """Stack samples taken during the block."""
    stacks: tuple[Stack, ...] = ()
    """Every distinct stack seen, with counts (the block's mini-flamegraph)."""
    source: str = "sampled"
    """How the stack was obtained: ``sampled``, ``deadman`` (faulthandler, GIL held), ``none``."""
    resolution: str = "exact"
    """``exact`` (measured in the loop thread) or ``heartbeat`` (uvloop: +- one heartbeat)."""
    advice: str = ""
    gil_held: float | None = None
    """Share of the watchdog's looks during the block that had to wait for the GIL
    (~1 for json.loads, re, pure Python; ~0 for sleeps, I/O, hashlib, zlib)."""
    gc_time: float = 0.0
    """Seconds of the block spent in the garbage collector."""
    functions: tuple[FunctionStat, ...] = ()
    """Profile mode: the functions that ran during the block, heaviest first."""
    stalled: float = 0.0
    """Seconds of the block the machine did not run the loop's thread (it sat
    runnable waiting for a CPU, or the process was stopped): not the code's doing."""
    phase: Phase = "running"
    """``startup`` for a block before the loop served anything (the app's imports
    inside the running loop, a lifespan's start)."""
    gc_generation: int | None = None
    """Kind ``gc``: the generation collected."""
    gc_trigger: str | None = None
    """Kind ``gc``: ``file:line`` of the code that was running when the collection began."""

    @property
    def gil_released(self) -> bool | None:
        """True when the watchdog could run during most of the block."""
        return None if self.gil_held is None else self.gil_held < 0.5

    @property
    def mostly_gc(self) -> bool:
        """True when the garbage collector took most of the block."""
        return self.gc_time > 0.5 * self.duration

    @property
    def user_frame(self) -> Frame | None:
        """The frame named by ``site``."""
        for frame in reversed(self.frames):
            if frame.location == self.site:
                return frame
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frames"] = [asdict(f) for f in self.frames]
        data["stacks"] = [
            {"frames": [asdict(f) for f in s.frames], "count": s.count} for s in self.stacks
        ]
        data["functions"] = [f.to_dict() for f in self.functions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Block:
        data = dict(data)
        data["frames"] = tuple(Frame(**f) for f in data.get("frames", ()))
        data["stacks"] = tuple(
            Stack(tuple(Frame(**f) for f in s["frames"]), s["count"])
            for s in data.get("stacks", ())
        )
        data["functions"] = tuple(FunctionStat.from_dict(f) for f in data.get("functions", ()))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Stall(_Plain):
    """A long iteration the program did not cause: the machine did not run the loop's thread.

    Not a block: it is not in ``Report.blocks`` or the sites, and no test fails for it.
    """

    loop: str
    started: float
    """Wall-clock time (``time.time()``) the iteration began."""
    duration: float
    cause: StallCause
    queued: float
    """Seconds the loop's thread sat runnable, waiting for a CPU (run-queue delay)."""
    paused: float = 0.0
    """Seconds the whole process did not run (stopped, frozen)."""
    throttled: float = 0.0
    """Seconds the process's cgroup was throttled for its CPU quota, where known."""
    busy: float = 0.0
    """What is left for the program's own code: ``duration`` less the time not run."""
    site: str | None = None
    """What the loop was running (``file:line``), where a sample saw it."""
    function: str | None = None
    task: str | None = None
    request: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class BlockingCall:
    """A blocking call made on a thread while it ran an event loop (strict mode), any length."""

    call: str
    """What was called: ``time.sleep``, ``open``, ``socket.connect``..."""
    detail: str
    """Its argument, shortened: the path, the address, the command."""
    site: str | None
    """``file:line`` of the innermost frame of user code that made the call."""
    function: str | None
    frames: tuple[Frame, ...]
    """The stack, innermost last."""
    task: str | None
    thread: str
    at: float
    """Wall-clock time of the call."""
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frames"] = [asdict(f) for f in self.frames]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockingCall:
        data = dict(data)
        data["frames"] = tuple(Frame(**f) for f in data.get("frames", ()))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Site(_Plain):
    """All blocks attributed to one source line."""

    site: str
    function: str | None
    count: int
    total: float
    max: float
    p95: float
    cpu_ratio: float | None
    kind: Kind
    advice: str
    gil_held: float | None = None
    """Duration-weighted share of the time the GIL was held (see Block.gil_held)."""
    gc_time: float = 0.0
    blocks: int = 0
    """How many of ``count`` crossed the block threshold (the rest are thousand cuts)."""
    block_total: float = 0.0
    """Of ``total``, the seconds in those ``blocks``."""
    requests: tuple[str, ...] = ()
    """The requests whose blocks were at this site, most blocks first (at most five)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Site:
        site = super().from_dict(data)
        return replace(site, requests=tuple(site.requests))



@dataclass(frozen=True)
class LoopStats(_Plain):
    """What one watched loop did during the session."""

    loop: str
    iterations: int | None
    """Iterations counted (None where only slow iterations are timed, the default)."""
    busy: float
    """Seconds the loop spent running callbacks (not waiting in select), where counted."""
    watched: float
    """Seconds the loop was watched."""
    blocks: int
    resolution: str = "exact"
    busy_fraction_sampled: float | None = None
    """Share of the watchdog's looks that found the loop busy (whole run)."""
    worst_window: float | None = None
    """Busy share of the worst 1-second window."""
    last_window: float | None = None
    """Busy share of the latest complete 1-second window (for gauges while watching)."""
    lag_p50: float | None = None
    """Event-loop lag percentiles, seconds: how late a callback scheduled from
    another thread ran (the watchdog's heartbeat)."""
    lag_p95: float | None = None
    lag_p99: float | None = None
    lag_max: float | None = None
    pid: int | None = None
    """The process the loop ran in."""
    timeline: tuple[tuple[float, float, float | None], ...] = ()
    """Per one-second window, oldest first (the last ten minutes): (wall-clock start,
    busy share, worst lag in it or None when no heartbeat came back then)."""

    #: Busier than this in any window, and latency climbs fast.
    SATURATED = 0.3

    @property
    def busy_measured(self) -> bool:
        """Whether the busy share was measured: busy time is only counted where every
        iteration is timed; elsewhere ``busy`` stays 0.0, which would read as idle."""
        return (
            self.busy_fraction_sampled is not None
            or self.worst_window is not None
            or self.iterations is not None
        )

    @property
    def busy_fraction(self) -> float:
        if self.busy_fraction_sampled is not None:
            return self.busy_fraction_sampled
        return self.busy / self.watched if self.watched > 0 else 0.0

    @property
    def saturated(self) -> bool:
        worst = self.worst_window if self.worst_window is not None else self.busy_fraction
        return worst > self.SATURATED

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["busy_fraction"] = round(self.busy_fraction, 4)
        data["saturated"] = self.saturated
        data["timeline"] = [list(point) for point in self.timeline]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopStats:
        stats = super().from_dict(data)
        points = tuple((start, share, lag) for start, share, lag in stats.timeline)
        return replace(stats, timeline=points)



@dataclass(frozen=True)
class Report:
    """Everything a watch session found: blocks, per-site aggregates, loop statistics."""

    threshold: float
    blocks: tuple[Block, ...] = ()
    sites: tuple[Site, ...] = ()
    loops: tuple[LoopStats, ...] = ()
    dropped_blocks: int = 0
    """Blocks found but not kept because of ``max_blocks`` (they still count in sites)."""
    events: tuple[str, ...] = ()
    """Notable things loopwatch did or could not do (degraded detection, offload decisions)."""
    functions: tuple[FunctionStat, ...] = ()
    """Profile mode: functions summed over all blocks, heaviest first."""
    calls: tuple[BlockingCall, ...] = ()
    """Strict mode: blocking calls made on a loop's thread, however short (the latest kept)."""
    dropped_calls: int = 0
    stalls: tuple[Stall, ...] = ()
    """Long iterations the machine caused, not the program (the latest kept)."""
    schema: int = field(default=SCHEMA)

    @property
    def total_blocked(self) -> float:
        """Seconds the loops were blocked, over every block found (dropped ones included).

        Thousand cuts (iterations under the threshold) are not in it. A report
        written before sites kept their blocks' time apart falls back on the
        sites' totals, then on the kept blocks.
        """
        if any(site.block_total for site in self.sites):
            return blocked_total(self.sites)
        return sum(site.total for site in self.sites) or sum(b.duration for b in self.blocks)

    @property
    def busiest_loop(self) -> LoopStats | None:
        """The loop with the busiest second (of those whose busy share was measured)."""

        def worst(stats: LoopStats) -> float:
            return stats.worst_window if stats.worst_window is not None else stats.busy_fraction

        return max((s for s in self.loops if s.busy_measured), key=worst, default=None)

    @property
    def cuts_known(self) -> bool:
        """Whether ``Site.blocks`` was filled in: reports from before thousand-cuts
        tracking leave it 0 everywhere; a filled-in report with a block has a site
        with ``blocks > 0``."""
        return not self.blocks or any(site.blocks for site in self.sites)

    def call_sites(self) -> list[tuple[str, str | None, str | None, int]]:
        """Strict mode's calls grouped: (call, site, function, how many), most first."""
        counts: dict[tuple[str, str | None, str | None], int] = {}
        for call in self.calls:
            key = (call.call, call.site, call.function)
            counts[key] = counts.get(key, 0) + 1
        return sorted(((*key, n) for key, n in counts.items()), key=lambda item: -item[3])

    def loops_by_process(self) -> list[tuple[int | None, tuple[LoopStats, ...]]]:
        """The loops grouped by the process they ran in, in the order processes first appear."""
        groups: dict[int | None, list[LoopStats]] = {}
        for stats in self.loops:
            groups.setdefault(stats.pid, []).append(stats)
        return [(pid, tuple(loops)) for pid, loops in groups.items()]

    def worst(self, n: int = 5) -> list[Block]:
        """The n longest blocks once the loops were running, longest first (start-up's apart)."""
        running = (b for b in self.blocks if b.phase != "startup")
        return sorted(running, key=lambda b: b.duration, reverse=True)[:n]

    def stalls_by_cause(self) -> list[tuple[StallCause, int, float]]:
        """(cause, how many, the longest) of the stalls, most frequent first.

        >>> Report(0.05, stalls=(Stall("L", 0.0, 0.15, "starved", 0.15),)).stalls_by_cause()
        [('starved', 1, 0.15)]
        """
        groups: dict[StallCause, list[float]] = {}
        for stall in self.stalls:
            groups.setdefault(stall.cause, []).append(stall.duration)
        return sorted(((cause, len(d), max(d)) for cause, d in groups.items()),
                      key=lambda group: -group[1])

    @property
    def startup_blocks(self) -> tuple[Block, ...]:
        """Blocks before a loop served anything (imports, a lifespan's start), in order."""
        return tuple(b for b in self.blocks if b.phase == "startup")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "threshold": self.threshold,
            "blocks": [b.to_dict() for b in self.blocks],
            "sites": [s.to_dict() for s in self.sites],
            "loops": [loop.to_dict() for loop in self.loops],
            "dropped_blocks": self.dropped_blocks,
            "events": list(self.events),
            "functions": [f.to_dict() for f in self.functions],
            "calls": [c.to_dict() for c in self.calls],
            "dropped_calls": self.dropped_calls,
            "stalls": [s.to_dict() for s in self.stalls],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(f"unsupported loopwatch report schema {schema!r} (expected {SCHEMA})")
        return cls(
            threshold=float(data["threshold"]),
            blocks=tuple(Block.from_dict(b) for b in data.get("blocks", ())),
            sites=tuple(Site.from_dict(s) for s in data.get("sites", ())),
            loops=tuple(LoopStats.from_dict(s) for s in data.get("loops", ())),
            dropped_blocks=int(data.get("dropped_blocks", 0)),
            events=tuple(data.get("events", ())),
            functions=tuple(FunctionStat.from_dict(f) for f in data.get("functions", ())),
            calls=tuple(BlockingCall.from_dict(c) for c in data.get("calls", ())),
            dropped_calls=int(data.get("dropped_calls", 0)),
            stalls=tuple(Stall.from_dict(s) for s in data.get("stalls", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | PathLike[str]) -> None:
        """Write the report as JSON, whole: a reader of ``path`` never sees half of it
        (written beside it, then renamed in place)."""
        target = os.fspath(path)
        partial = f"{target}.{os.getpid()}.partial"
        try:
            with open(partial, "w", encoding="utf-8") as out:
                out.write(self.to_json())
                out.write("\n")
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Report:
        with open(path, encoding="utf-8") as src:
            return cls.from_json(src.read())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


#: Distinct sites a :class:`SiteTable` keeps apart. Slow iterations at sites first
#: seen after that many are summed in one :data:`OTHER_SITES` entry, so that code
#: which blocks at ever new lines (generated code, ``exec``) cannot grow a
#: long-running session's memory, while the totals stay right. A full table
#: takes about 5 MiB (mostly the durations kept for each site's p95).
MAX_SITES = 1000

#: The site that sums slow iterations at sites beyond :data:`MAX_SITES`.
OTHER_SITES = "<other sites>"

#: The same sample on every run: a report does not change from one run to the next.
_SEED = 0x100B


def _remedy(kind: Kind, gil_held: float | None) -> str | None:
    """Which fix a block's advice points to, in a word or three (None: no advice)."""
    if kind == "cpu":
        return "computing in C code" if gil_held is not None and gil_held < 0.5 else "computing"
    return {"wait": "waiting", "mixed": "mixed", "gc": "garbage collection"}.get(kind)


class SiteAccumulator:
    """Per-site running totals: memory stays bounded however many blocks arrive.

    Count, total, max and the CPU / GIL / GC shares are exact. The p95 comes
    from a uniform random sample of at most :attr:`KEEP` durations (a reservoir
    sample), so that it describes the whole session rather than mostly its
    latest part; it is exact up to KEEP slow iterations.

    >>> acc = SiteAccumulator("app.py:12", "handler")
    >>> for ms in range(1, 2001):
    ...     acc.add(ms / 1000, cpu_ratio=1.0)
    >>> site = acc.freeze()
    >>> site.count, round(site.total), site.max, len(acc.durations) == acc.KEEP
    (2000, 2001, 2.0, True)
    """

    #: Durations kept per site for the percentile (8 bytes each).
    KEEP = 512

    def __init__(
        self, site: str, function: str | None, rng: random.Random | None = None
    ) -> None:
        self.site = site
        self.function = function
        self.count = 0
        self.blocks = 0
        self.block_total = 0.0
        self.total = 0.0
        self.max = 0.0
        self.cpu_time = 0.0
        self.cpu_wall = 0.0
        self.gil_time = 0.0
        self.gil_wall = 0.0
        self.gc_time = 0.0
        #: blocks per request served (a few distinct ones: sites are per line, not per route)
        self.requests: dict[str, int] = {}
        #: blocks per remedy: one line can compute in one block and wait in another
        self.remedies: dict[str, int] = {}
        # array('d'): 8 bytes a duration, where a list of floats takes 32
        self.durations: array[float] = array("d")
        self._rng = rng if rng is not None else random.Random(_SEED)

    def add(
        self,
        duration: float,
        cpu_ratio: float | None,
        gil_held: float | None = None,
        gc_time: float = 0.0,
        block: bool = True,
        request: str | None = None,
        kind: Kind | None = None,
    ) -> None:
        self.count += 1
        remedy = None if kind is None else _remedy(kind, gil_held)
        if remedy is not None:
            self.remedies[remedy] = self.remedies.get(remedy, 0) + 1
        if request is not None and (request in self.requests or len(self.requests) < 32):
            self.requests[request] = self.requests.get(request, 0) + 1
        self.total += duration
        if block:
            self.blocks += 1
            self.block_total += duration
        self.max = max(self.max, duration)
        self.gc_time += gc_time
        if cpu_ratio is not None:
            self.cpu_time += cpu_ratio * duration
            self.cpu_wall += duration
        if gil_held is not None:
            self.gil_time += gil_held * duration
            self.gil_wall += duration
        if len(self.durations) < self.KEEP:
            self.durations.append(duration)
        else:
            # Reservoir sampling (Vitter's algorithm R): the count-th duration
            # replaces a kept one with probability KEEP / count, which leaves
            # every duration seen so far equally likely to be in the sample.
            slot = self._rng.randrange(self.count)
            if slot < self.KEEP:
                self.durations[slot] = duration

    def freeze(self) -> Site:
        ratio = self.cpu_time / self.cpu_wall if self.cpu_wall > 0 else None
        gil = self.gil_time / self.gil_wall if self.gil_wall > 0 else None
        mostly_gc = self.gc_time > 0.5 * self.total
        kind: Kind = "gc" if mostly_gc else classify(ratio)
        advice = advise(kind, gil, mostly_gc)
        if len(self.remedies) > 1:
            # One advice for the line must not contradict half of its blocks.
            seen = ", ".join(f"{n} {word}" for word, n in sorted(
                self.remedies.items(), key=lambda item: -item[1]))
            advice = f"its blocks differ ({seen}): see each block; overall, {advice}"
        return Site(
            site=self.site,
            function=self.function,
            count=self.count,
            total=self.total,
            max=self.max,
            p95=percentile(self.durations, 95),
            cpu_ratio=ratio,
            kind=kind,
            advice=advice,
            gil_held=gil,
            gc_time=self.gc_time,
            blocks=self.blocks,
            block_total=self.block_total,
            requests=tuple(sorted(self.requests, key=lambda r: -self.requests[r])[:5]),
        )


class SiteTable:
    """Per-site accumulators keyed by ``file:line``: one place that groups slow iterations.

    At most ``max_sites`` sites are kept apart (:data:`MAX_SITES` by default);
    slow iterations at sites first seen after that are summed in one
    :data:`OTHER_SITES` entry, so counts and totals over all sites stay exact.

    >>> table = SiteTable(max_sites=2)
    >>> for line in range(1, 6):
    ...     table.add(f"gen.py:{line}", "f", 0.1, cpu_ratio=1.0)
    >>> [(s.site, s.count) for s in table.freeze()]
    [('<other sites>', 3), ('gen.py:1', 1), ('gen.py:2', 1)]
    """

    def __init__(self, max_sites: int | None = None) -> None:
        if max_sites is None:
            max_sites = MAX_SITES  # read now, not at import: tests may lower it
        if isinstance(max_sites, bool) or not isinstance(max_sites, int) or max_sites < 1:
            raise ValueError(f"max_sites must be a whole number >= 1, not {max_sites!r}")
        self.max_sites = max_sites
        self._sites: dict[str, SiteAccumulator] = {}
        self._other: SiteAccumulator | None = None
        # one generator for the table's reservoirs: a Random is 2.5 KiB, too big for each site
        self._rng = random.Random(_SEED)

    def __len__(self) -> int:
        """Entries in the table, the :data:`OTHER_SITES` one included."""
        return len(self._sites) + (self._other is not None)

    def add(
        self,
        site: str,
        function: str | None,
        duration: float,
        cpu_ratio: float | None,
        gil_held: float | None = None,
        gc_time: float = 0.0,
        block: bool = True,
        request: str | None = None,
        kind: Kind | None = None,
    ) -> None:
        acc = self._sites.get(site)
        if acc is None:
            if len(self._sites) < self.max_sites:
                acc = self._sites[site] = SiteAccumulator(site, function, self._rng)
            else:
                if self._other is None:
                    self._other = SiteAccumulator(OTHER_SITES, None, self._rng)
                acc = self._other
        acc.add(duration, cpu_ratio, gil_held, gc_time, block, request, kind)

    def add_block(self, block: Block) -> None:
        self.add(block.site or "<unknown>", block.function, block.duration, block.cpu_ratio,
                 block.gil_held, block.gc_time, request=block.request, kind=block.kind)

    def freeze(self) -> tuple[Site, ...]:
        """The sites, sorted by total time blocked (largest first)."""
        sites = [a.freeze() for a in self._sites.values()]
        if self._other is not None:
            other = self._other.freeze()
            sites.append(replace(
                other,
                advice=f"summed over the sites first seen after {self.max_sites} others "
                       "(code that blocks at ever new lines: generated code, exec?)",
            ))
        return tuple(sorted(sites, key=lambda s: -s.total))


def blocked_total(sites: Iterable[Site]) -> float:
    """Seconds blocked over these sites: their blocks' time, not their thousand cuts'.

    >>> table = SiteTable()
    >>> table.add("a.py:1", "f", 0.2, cpu_ratio=1.0)
    >>> table.add("a.py:1", "f", 0.01, cpu_ratio=1.0, block=False)
    >>> round(blocked_total(table.freeze()), 3)
    0.2
    """
    return sum(site.block_total for site in sites)


def merge_sites(groups: Iterable[Iterable[Site]]) -> tuple[Site, ...]:
    """Several processes' sites as one table, sorted by total time (largest first).

    Counts and times add up and ``max`` is the largest; each process kept its
    own sample of durations, so ``p95`` is the largest of theirs (an upper bound).

    >>> a = Site("app.py:3", "f", 2, 0.4, 0.3, 0.3, 1.0, "cpu", "", blocks=2, block_total=0.4)
    >>> b = Site("app.py:3", "f", 1, 0.2, 0.2, 0.2, 0.0, "wait", "", blocks=1, block_total=0.2)
    >>> (merged,) = merge_sites([[a], [b]])
    >>> merged.count, round(merged.total, 1), round(merged.cpu_ratio, 2), merged.kind
    (3, 0.6, 0.67, 'mixed')
    """
    by_site: dict[str, list[Site]] = {}
    for group in groups:
        for site in group:
            by_site.setdefault(site.site, []).append(site)
    merged = [parts[0] if len(parts) == 1 else _merged(parts) for parts in by_site.values()]
    return tuple(sorted(merged, key=lambda s: -s.total))


def _weighted(parts: list[Site], value: Callable[[Site], float | None]) -> float | None:
    known = [(v, p.total) for p in parts if (v := value(p)) is not None]
    weight = sum(w for _, w in known)
    return sum(v * w for v, w in known) / weight if known and weight > 0 else None


def _merged(parts: list[Site]) -> Site:
    total = sum(p.total for p in parts)
    ratio = _weighted(parts, lambda p: p.cpu_ratio)
    gil = _weighted(parts, lambda p: p.gil_held)
    gc_time = sum(p.gc_time for p in parts)
    kind = classify(ratio)
    requests = dict.fromkeys(r for p in parts for r in p.requests)
    return Site(
        site=parts[0].site,
        function=parts[0].function,
        count=sum(p.count for p in parts),
        total=total,
        max=max(p.max for p in parts),
        p95=max(p.p95 for p in parts),
        cpu_ratio=ratio,
        kind=kind,
        advice=advise(kind, gil, gc_time > 0.5 * total),
        gil_held=gil,
        gc_time=gc_time,
        blocks=sum(p.blocks for p in parts),
        block_total=sum(p.block_total for p in parts),
        requests=tuple(requests)[:5],
    )


def aggregate_sites(blocks: Iterable[Block]) -> tuple[Site, ...]:
    """Group blocks by site, sorted by total time blocked (largest first)."""
    table = SiteTable()
    for block in blocks:
        table.add_block(block)
    return table.freeze()
