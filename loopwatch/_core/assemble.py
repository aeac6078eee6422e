"""From what the watchdog saw of one iteration to a :class:`Block` or a :class:`Cut`.

Pure functions over plain values (times, CPU readings, sampled stacks): no
thread, lock or loop. The watchdog gathers an :class:`Observed` while an
iteration runs and calls :func:`block` or :func:`cut` once it has ended, so
each decision (CPU share, GIL, site, source, advice) can be tested with
made-up samples.

>>> from loopwatch.model import Frame
>>> seen = Observed(start=10.0, end=10.2, before=Reading(9.95, (1.0, None)),
...                 cpu_end=(1.19, None), stacks={(Frame("app.py", 7, "handler"),): 3})
>>> b = block(seen, block_id=1, loop="Loop#1", user_code=UserCode(), wall_offset=0.0)
>>> (b.site, b.kind, round(b.cpu_ratio, 2))
('app.py:7', 'cpu', 0.95)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loopwatch.model import (
    GC_SITE,
    Block,
    Frame,
    FunctionStat,
    Kind,
    Stack,
    Stall,
    StallCause,
    advise,
    classify,
)
from loopwatch.stacks import UserCode

#: a loop thread's (CPU seconds, seconds spent runnable but waiting for a CPU, where known)
Clock = tuple[float, "float | None"]

#: Distinct stacks a block keeps (the most sampled ones).
STACKS_KEPT = 100


@dataclass(frozen=True)
class Cut:
    """An iteration slower than the site threshold but not a block: one of a thousand cuts."""

    duration: float
    cpu_ratio: float | None
    site: str | None
    function: str | None
    gc_time: float
    loop: str = ""


@dataclass(frozen=True)
class Reading:
    """The loop thread's CPU clock, read at ``at`` (the loop's clock)."""

    at: float
    cpu: Clock | None


@dataclass(frozen=True)
class Observed:
    """Everything known of one ended iteration, as plain values."""

    start: float
    end: float
    #: the last CPU reading taken before the iteration was first seen
    before: Reading | None
    #: the loop thread's clock when the iteration ended
    cpu_end: Clock | None
    #: run-queue time from the iteration's first look on, when ``before`` lacks it
    queued_from: Clock | None = None
    #: sampled stacks (innermost last) and how often each was seen
    stacks: Mapping[tuple[Frame, ...], int] = field(default_factory=dict)
    #: faulthandler dumps during the iteration: (stack, weight in samples)
    dumps: Sequence[tuple[tuple[Frame, ...], int]] = ()
    #: stacks owed weight for the time the watchdog then waited for the GIL, in samples
    credits: Mapping[tuple[Frame, ...], int] = field(default_factory=dict)
    task: str | None = None
    coroutine: str | None = None
    #: where the block's task was when first seen: its coroutine's line, or where the
    #: coroutine begins once it has returned (the site when no sample shows user code)
    task_frame: Frame | None = None
    request: str | None = None
    callback: str | None = None
    #: looks at the iteration, those that came late, and the lateness in all
    wakes: int = 0
    late_wakes: int = 0
    late_time: float = 0.0
    #: from when the watchdog watched it (lateness counts from here)
    watch_from: float = 0.0
    gc_time: float = 0.0
    #: the oldest generation the collector ran during the iteration, if it ran
    gc_generation: int | None = None
    resolution: str = "exact"
    functions: tuple[FunctionStat, ...] = ()
    #: seconds of the iteration the whole process was stopped (the watchdog's view)
    paused: float = 0.0
    #: seconds the loop's thread waited for the GIL while loopwatch's watchdog held it
    #: and sat waiting for a CPU (the machine's doing too)
    held: float = 0.0
    #: seconds the process's cgroup was throttled for its CPU quota meanwhile (None: unknown)
    throttled: float | None = None
    #: the loop had served nothing yet when it ran (start-up: imports, a lifespan)
    startup: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def queued(self) -> float | None:
        """Seconds the loop's thread sat runnable, waiting for a CPU (None: not known)."""
        return queued_time(self.before, self.cpu_end, self.queued_from)

    @property
    def not_run(self) -> float:
        """Seconds of the iteration the machine did not run the loop's thread."""
        return min(self.duration, (self.queued or 0.0) + self.paused + self.held)


def queued_between(before: Clock | None, after: Clock | None) -> float:
    """Run-queue seconds of a thread between two readings of its clock (0.0: not known).

    >>> queued_between((1.0, 0.5), (1.2, 0.75))
    0.25
    """
    if before is None or after is None or before[1] is None or after[1] is None:
        return 0.0
    return max(0.0, after[1] - before[1])


def queued_time(
    before: Reading | None, cpu_end: Clock | None, queued_from: Clock | None = None
) -> float | None:
    """Run-queue seconds between the earliest reading that knows them and ``cpu_end``.

    >>> queued_time(Reading(0.0, (1.0, 0.25)), (1.05, 0.40))
    0.15
    """
    base = before.cpu if before is not None and before.cpu is not None else None
    if base is None or base[1] is None:
        base = queued_from
    if cpu_end is None or cpu_end[1] is None or base is None or base[1] is None:
        return None
    return round(max(0.0, cpu_end[1] - base[1]), 9)


def cpu_ratio(
    before: Reading | None,
    cpu_end: Clock | None,
    start: float,
    end: float,
    queued_from: Clock | None = None,
    paused: float = 0.0,
) -> float | None:
    """CPU seconds over the seconds the loop thread could have run, from ``start`` to ``end``.

    The CPU reading before the iteration is the last look's; when that look
    found the loop idle, the thread used (next to) no CPU until ``start``, so
    the time between the look and ``start`` is not counted as time it could
    have computed. Time spent runnable but waiting for a CPU is neither
    computing nor waiting: it is left out, counted from the earliest reading
    that knows it.

    >>> cpu_ratio(Reading(0.0, (1.0, 0.0)), (1.05, 0.05), start=0.0, end=0.1)
    1.0
    """
    if before is None or before.cpu is None or cpu_end is None:
        return None
    computing = cpu_end[0] - before.cpu[0]
    queued = queued_time(before, cpu_end, queued_from) or 0.0
    could_run = (end - max(before.at, start)) - queued - paused
    if could_run <= 0:
        return None
    return min(1.0, max(0.0, computing / could_run))


def gil_held(observed: Observed) -> float | None:
    """How much of the iteration the loop thread kept the GIL, from the watchdog's lateness.

    Many short waits (pure Python: the GIL comes back every 5 ms) or one long
    one (a single C call holding it throughout) both mean "held". None when the
    watchdog never looked at the iteration while it ran.
    """
    if not observed.wakes:
        return None
    by_count = observed.late_wakes / observed.wakes
    span = observed.end - observed.watch_from
    by_time = observed.late_time / span if span > 0 else 0.0
    return min(1.0, max(by_count, by_time))


def weigh(observed: Observed) -> Counter[tuple[Frame, ...]]:
    """Each distinct stack and its weight: its samples, and dumps as the samples they stand for."""
    weighted: Counter[tuple[Frame, ...]] = Counter(observed.stacks)
    for frames, weight in observed.dumps:
        weighted[frames] += weight
    weighted.update(observed.credits)
    return weighted


def choose_site(
    weighted: Counter[tuple[Frame, ...]], user_code: UserCode, fallback: bool = True
) -> tuple[tuple[Frame, ...], Frame | None]:
    """The most-sampled innermost user frame, and the most-sampled stack through it.

    With ``fallback``, a block where no user code was seen gets its innermost
    frame (a library's) as the site.
    """
    if not weighted:
        return (), None
    votes: Counter[Frame] = Counter()
    #: of those votes, samples that caught a call in progress below the user's line: on a
    #: tie they win over a line the loop only reached after a call returned
    calling: Counter[Frame] = Counter()
    innermost: Counter[Frame] = Counter()
    for frames, count in weighted.items():
        index = user_code.site_index(frames)
        if index is not None:
            votes[frames[index]] += count
            if index < len(frames) - 1:
                calling[frames[index]] += count
        elif frames:
            innermost[frames[-1]] += count
    if not votes and not (fallback and innermost):
        return (), None
    if votes:
        site_frame = max(votes, key=lambda frame: (votes[frame], calling[frame]))
    else:
        site_frame = innermost.most_common(1)[0][0]
    best = max((item for item in weighted.items() if site_frame in item[0]), key=lambda i: i[1])
    return best[0], site_frame


Verdict = Literal["block", "stall", "cut", "none"]
"""What an ended iteration is: see :func:`verdict`."""


def verdict(observed: Observed, *, threshold: float, site_threshold: float) -> Verdict:
    """What an ended iteration is, from how long it was and how much of it was the program's.

    Over the threshold: a block, unless the machine did not run the loop's thread
    for enough of it that the program's own part is not (a stall; so too an
    iteration the watchdog never saw run and mostly not run: the watchdog was
    kept off the CPU with it, and a block that holds the GIL computes). Over the
    site threshold only: a cut if its own part is over it too.

    >>> seen = Observed(start=1.0, end=1.16, before=Reading(0.99, (0.5, 2.0)),
    ...                 cpu_end=(0.51, 2.15))
    >>> verdict(seen, threshold=0.05, site_threshold=0.02)
    'stall'
    """
    duration = observed.duration
    if duration <= site_threshold:
        return "none"
    own = duration - observed.not_run
    if duration > threshold:
        unseen = not observed.stacks and not observed.dumps and own < duration / 2
        return "stall" if own <= threshold or unseen else "block"
    # (one over the site threshold only by its wake-up on a busy machine is not)
    return "cut" if own > site_threshold else "none"


def stall(
    observed: Observed,
    *,
    loop: str,
    user_code: UserCode,
    wall_offset: float,
    pid: int | None = None,
) -> Stall:
    """The :class:`Stall` for an iteration whose :func:`verdict` is ``stall``.

    >>> seen = Observed(start=1.0, end=1.16, before=Reading(0.99, (0.5, 2.0)),
    ...                 cpu_end=(0.51, 2.15))
    >>> s = stall(seen, loop="L", user_code=UserCode(), wall_offset=0.0)
    >>> (s.cause, round(s.queued, 2), round(s.busy, 2))
    ('starved', 0.15, 0.01)
    """
    lost = observed.not_run
    queued = (observed.queued or 0.0) + observed.held
    throttled = observed.throttled or 0.0
    cause: StallCause
    if observed.paused > queued:
        cause = "paused"
    elif throttled >= queued / 2:
        cause = "throttled"
    else:
        cause = "starved"
    _, site_frame = choose_site(weigh(observed), user_code)
    return Stall(
        loop=loop,
        started=wall_offset + observed.start,
        duration=observed.duration,
        cause=cause,
        queued=queued,
        paused=observed.paused,
        throttled=throttled,
        busy=observed.duration - lost,
        site=site_frame.location if site_frame else None,
        function=site_frame.function if site_frame else None,
        task=observed.task,
        request=observed.request,
        pid=pid,
    )


#: Files of the import system: a block under one of them before any request is start-up.
_IMPORTING = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def starting_up(stacks: Iterable[tuple[Frame, ...]]) -> bool:
    """Whether the sampled stacks show start-up work: an import, or an ASGI lifespan's start."""
    for frames in stacks:
        for frame in frames:
            if frame.file in _IMPORTING or frame.file.endswith(
                ("importlib/_bootstrap.py", "importlib/__init__.py")
            ):
                return True
            if frame.function == "startup" and "lifespan" in frame.file:
                return True
    return False


def block(
    observed: Observed,
    *,
    block_id: int,
    loop: str,
    user_code: UserCode,
    wall_offset: float,
    pid: int | None = None,
) -> Block:
    """The :class:`Block` for an iteration over the threshold."""
    ratio = cpu_ratio(
        observed.before, observed.cpu_end, observed.start, observed.end, observed.queued_from,
        observed.paused + observed.held,
    )
    weighted = weigh(observed)
    frames, site_frame = choose_site(weighted, user_code)
    task_frame = observed.task_frame
    if task_frame is not None and user_code.site_index((task_frame,)) is not None and (
        site_frame is None or user_code.site_index((site_frame,)) is None
    ):
        # No sample shows the program's code: a C call that held the GIL lets the
        # watchdog in only where the interpreter next checks, which may be past the
        # task's end (in asyncio's call_soon). The task it ran for says whose it was.
        site_frame = task_frame
    held = gil_held(observed)
    mostly_gc = observed.gc_time > 0.5 * observed.duration
    kind: Kind = "gc" if mostly_gc else classify(ratio)
    from_dump = site_frame is not None and any(site_frame in f for f, _ in observed.dumps)
    where = site_frame.location if site_frame else None
    site: str | None
    function: str | None
    if mostly_gc:
        # The collection is the block; the line it interrupted is only its trigger.
        generation = observed.gc_generation
        named = "garbage collection" + (
            f" (generation {generation})" if generation is not None else "")
        site, function, trigger = GC_SITE, named, where or _innermost(frames)
    else:
        site, function, trigger = where, site_frame.function if site_frame else None, None
    startup = observed.startup and observed.request is None and starting_up(weighted)
    return Block(
        id=block_id,
        loop=loop,
        started=wall_offset + observed.start,
        duration=observed.duration,
        cpu_ratio=ratio,
        kind=kind,
        frames=frames,
        site=site,
        function=function,
        task=observed.task,
        coroutine=observed.coroutine,
        request=observed.request,
        pid=pid,
        callback=observed.callback,
        samples=sum(observed.stacks.values()) + len(observed.dumps),
        # a pathological iteration (hours long) must not make an endless list
        stacks=tuple(Stack(f, c) for f, c in weighted.most_common(STACKS_KEPT)),
        source="deadman" if from_dump else ("sampled" if weighted else "none"),
        resolution=observed.resolution,
        advice=advise(kind, held, mostly_gc),
        gil_held=held,
        gc_time=observed.gc_time,
        functions=observed.functions,
        stalled=observed.not_run,
        phase="startup" if startup else "running",
        gc_generation=observed.gc_generation if mostly_gc else None,
        gc_trigger=trigger,
    )


def _innermost(frames: tuple[Frame, ...]) -> str | None:
    return frames[-1].location if frames else None


def cut(observed: Observed, *, loop: str, user_code: UserCode) -> Cut:
    """The :class:`Cut` for an iteration over the site threshold, under the block threshold."""
    # Only user code counts here: a sample of the loop's own machinery says
    # nothing about which line made this iteration slow.
    _, site_frame = choose_site(weigh(observed), user_code, fallback=False)
    return Cut(
        duration=observed.duration,
        cpu_ratio=cpu_ratio(observed.before, observed.cpu_end, observed.start, observed.end),
        site=site_frame.location if site_frame else None,
        function=site_frame.function if site_frame else None,
        gc_time=observed.gc_time,
        loop=loop,
    )
