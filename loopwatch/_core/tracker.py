"""What the watchdog keeps of one loop between looks: the iteration it tracks, and busy share."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from loopwatch._core.assemble import Clock, Reading, queued_between
from loopwatch.model import Frame
from loopwatch.stacks import RawStack

#: Slow iterations (looks at an old iteration, or ended ones) needed within
#: Whole windows kept for the timeline (ten minutes of one-second windows).
HISTORY = 600

#: CUT_WINDOW seconds before a loop is timed per iteration ("thousand cuts").
CUT_EVIDENCE = 3
CUT_WINDOW = 2.0

#: Busy share is also kept per window of this many seconds; the worst one is reported.
WINDOW = 1.0


@dataclass
class BusyShare:
    """Time-weighted share of the time a loop was busy, overall and per ``WINDOW``.

    Each look says whether the loop was inside an iteration; the time since the
    previous look counts as busy or idle accordingly.

    >>> share = BusyShare()
    >>> share.account(0.5, 0.5, busy=True); share.account(1.0, 0.5, busy=False)
    >>> share.account(1.5, 0.5, busy=False)
    >>> share.overall, share.worst, share.last
    (0.3333333333333333, 0.5, 0.5)
    """

    looked: float = 0.0
    busy: float = 0.0
    window_start: float | None = None
    window_looked: float = 0.0
    window_busy: float = 0.0
    worst_window: float | None = None
    last: float | None = None
    """The share of the latest whole window."""
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    """(start, busy share) of the latest whole windows, oldest first (loop clock)."""

    def account(self, now: float, elapsed: float, busy: bool) -> None:
        """The ``elapsed`` seconds up to ``now`` were busy (or not)."""
        if elapsed <= 0:
            return
        began = now - elapsed
        if self.window_start is None:
            self.window_start = began
        elif began >= self.window_start + WINDOW and self.window_looked > 0:
            # a stretch that begins past the window belongs to the next one
            share = self.window_busy / self.window_looked
            self.worst_window = max(self.worst_window or 0.0, share)
            self.last = share
            self.history.append((self.window_start, share))
            self.window_start, self.window_looked, self.window_busy = began, 0.0, 0.0
        self.looked += elapsed
        self.window_looked += elapsed
        if busy:
            self.busy += elapsed
            self.window_busy += elapsed

    @property
    def overall(self) -> float | None:
        return self.busy / self.looked if self.looked > 0 else None

    @property
    def worst(self) -> float | None:
        """The busiest window; the one in progress counts once it is a quarter long."""
        if self.window_looked >= WINDOW / 4:
            return max(self.worst_window or 0.0, self.window_busy / self.window_looked)
        return self.worst_window


@dataclass
class Run:
    """One callback of a heartbeat loop, as the samples saw it run."""

    root: int | None
    first: float
    last: float
    count: int
    #: the loop thread's clock at the look before its first sample
    before: Reading | None
    #: the loop thread's clock at its first and at its latest sample
    at_first: Reading | None = None
    at_last: Reading | None = None

    def cpu_share(self) -> float | None:
        """The share of its sampled span it computed or wanted to (None: too short to tell)."""
        a, b = self.at_first, self.at_last
        if a is None or b is None or b.at - a.at < 0.002:
            return None
        wanted = _wanted_cpu(a, b)
        return None if wanted is None else min(1.0, max(0.0, wanted / (b.at - a.at)))


def _wanted_cpu(a: Reading, b: Reading) -> float | None:
    """Seconds the loop's thread computed or sat waiting for a CPU between two readings:
    on a busy machine a computing callback waits for a CPU, a sleeping one does not."""
    if a.cpu is None or b.cpu is None:
        return None
    return b.cpu[0] - a.cpu[0] + queued_between(a.cpu, b.cpu)


class Callbacks:
    """The callbacks a heartbeat loop ran, in turn, as the samples of one busy stretch saw
    them (see HeartbeatProbe.callback_root): which one blocked, and from when to when.

    A heartbeat only says the loop was busy from a ping to its answer; the loop
    may have run other callbacks before and after the one that blocked.
    """

    #: runs kept: a pathological stretch must not make an endless list
    KEEP = 64

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def clear(self) -> None:
        self.runs = []

    def sampled(
        self, root: int | None, now: float, before: Reading | None, reading: Reading | None
    ) -> None:
        """A sample at ``now`` saw ``root`` running; ``reading``: the clock read by this look."""
        runs = self.runs
        if runs and runs[-1].root == root:
            runs[-1].last = now
            runs[-1].count += 1
            runs[-1].at_last = reading
            return
        runs.append(Run(root, now, now, 1, before, reading, reading))
        if len(runs) > self.KEEP:
            del runs[0]

    def blocking(self, start: float, end: float) -> tuple[float, float, Reading | None] | None:
        """(start, end, the clock reading to count its CPU from) of the callback sampled
        most (the latest of equals), each end where the neighbouring callback took over
        (see _handover); None if no sample saw a callback."""
        runs = self.runs
        seen = [(run.count, run.first, index) for index, run in enumerate(runs)
                if run.root is not None]
        if not seen:
            return None
        index = max(seen)[2]
        run = runs[index]
        before = None
        if index > 0:
            start = max(start, _handover(runs[index - 1], run))
            # its own CPU and run-queue time count from its first sample: what the loop's
            # thread did before then may be the callback before's
            before = run.at_first or run.before
        if index < len(runs) - 1:
            end = min(end, _handover(run, runs[index + 1]))
        return start, end, before


def _handover(earlier: Run, later: Run) -> float:
    """When ``later`` took over from ``earlier``, between the last sample of one and the
    first of the other.

    Halfway, unless one computed and the other waited: then the CPU the loop's
    thread used in between says how much of the gap was the computing one's
    (the samples are far apart on a busy machine, and halfway is far off).
    """
    a, b = earlier.at_last, later.at_first
    halfway = (earlier.last + later.first) / 2
    used = None if a is None or b is None or b.at <= a.at else _wanted_cpu(a, b)
    if a is None or b is None or used is None:
        return halfway
    first, second = earlier.cpu_share(), later.cpu_share()
    if first is None and second is not None and abs(second - 0.5) > 0.3:
        first = 1.0 - second  # (one computing, one waiting: the other is the other kind)
    if second is None and first is not None and abs(first - 0.5) > 0.3:
        second = 1.0 - first
    if first is None or second is None or abs(first - second) < 0.5:
        return halfway
    gap = b.at - a.at
    # used = first * x + second * (gap - x), for x the earlier one's part of the gap
    part = (used - second * gap) / (first - second)
    return a.at + min(gap, max(0.0, part))


@dataclass
class Tracking:
    """Watchdog-side state of one probe."""

    seen_start: float = 0.0
    before: Reading | None = None
    last: Reading | None = None
    samples: Counter[RawStack] = field(default_factory=Counter)
    task: str | None = None
    coroutine: str | None = None
    #: where the task's coroutine was when first seen (see assemble.Observed.task_frame)
    task_frame: Frame | None = None
    #: the request the task served ("GET /users/{id}"), as a string only
    request: str | None = None
    #: the task's OpenTelemetry span, held until the block is handed on
    span: Any = None
    dumps: list[tuple[float, tuple[Frame, ...], int]] = field(default_factory=list)
    #: the latest sample of the iteration, and what it is owed: how long the watchdog
    #: then waited for the GIL, in samples (the loop's thread was still where it was)
    last_sample: RawStack | None = None
    credits: dict[RawStack, int] = field(default_factory=dict)
    blocks: int = 0
    done: float = -1.0
    #: the watchdog's wake-ups while it tracked this iteration, and how many were late:
    #: late means another thread (the loop, in this iteration) held the GIL
    wakes: int = 0
    late_wakes: int = 0
    #: and how long those waits were, from when the watchdog first looked
    late_time: float = 0.0
    watch_from: float = 0.0
    share: BusyShare = field(default_factory=BusyShare)
    #: the loop has had iterations over the site threshold: watch it closely
    cuts: bool = False
    pinged: float = 0.0
    #: a reading with run-queue time, taken once the iteration looked like a block
    queued_from: Clock | None = None
    #: the cgroup's throttled seconds then (None: not known)
    throttled_from: float | None = None
    #: (began, ended) of the latest stretches the process did not run, less what this
    #: loop's thread spent waiting for a CPU then
    pauses: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    #: (began, ended) of the latest stretches the watchdog held the GIL while waiting for a
    #: CPU, when this loop's thread was computing (so it wanted the GIL)
    held: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    #: the loop thread's clock at the end of the latest iteration finished
    ended_at: Reading | None = None
    #: heartbeat loops: the callbacks the samples saw, in turn (see Callbacks)
    callbacks: Callbacks = field(default_factory=lambda: Callbacks())
    #: the loop has served a request (blocks before that may be start-up)
    served: bool = False
    #: the end of the latest iteration finished (or stall reported) on this loop
    finished_to: float = 0.0
    #: when a stall was last reported from the looks around it (no iteration seen)
    stall_reported_at: float = 0.0
    #: when looks found iterations older than half the site threshold (recent ones)
    cut_looks: deque[float] = field(default_factory=lambda: deque(maxlen=CUT_EVIDENCE))
    #: the loop is timed on every iteration until then (0.0: it was not switched)
    exact_until: float = 0.0

    def cut_seen(self, at: float) -> bool:
        """Note a slow iteration seen at ``at``; True once that makes a thousand cuts likely."""
        self.cut_looks.append(at)
        return len(self.cut_looks) == CUT_EVIDENCE and at - self.cut_looks[0] < CUT_WINDOW

    def watching_cuts(self, now: float) -> bool:
        """The loop has cuts, or a look just showed a possible one: gather evidence quickly."""
        return self.cuts or bool(self.cut_looks and now - self.cut_looks[-1] < CUT_WINDOW)
