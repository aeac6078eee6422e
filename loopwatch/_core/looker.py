"""Looking at one loop: track its iteration, sample it, and turn what was seen into findings.

The watchdog calls :class:`Looker` for each watched loop on every look. The
look reads the iteration in progress from the probe, samples the loop
thread's stack while it runs long, counts busy time, applies the thousand-cuts
policy (time every iteration for a while once slow iterations keep coming),
and, when an iteration has ended, joins samples, CPU clocks, GC pauses and
profile results into a :class:`~loopwatch.model.Block` or a
:class:`~loopwatch._core.assemble.Cut` (see :mod:`loopwatch._core.assemble`),
handed to the watchdog for fan-out. Per-loop state lives in the probe's
:class:`~loopwatch._core.tracker.Tracking`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import FrameType
from typing import Any

from loopwatch._core import assemble
from loopwatch._core.assemble import Clock, Cut, Observed, Reading, queued_between
from loopwatch._core.findings import Found
from loopwatch._core.gctimer import GcTimer
from loopwatch._core.quota import Throttling
from loopwatch._core.settings import Settings
from loopwatch._core.thread import LATE
from loopwatch._core.tracker import WINDOW, Tracking
from loopwatch._log import log_once, logger
from loopwatch.model import Frame, FunctionStat, LoopStats, Stall, percentile
from loopwatch.probe import HeartbeatProbe, Probe, SelectorProbe
from loopwatch.requests import request_of
from loopwatch.stacks import RawStack, UserCode, capture, to_frames
from loopwatch.traces import span_of

WALL_OFFSET = time.time() - time.monotonic()
"""Add to a time.monotonic() reading (the loop's clock) to get wall-clock time."""

#: Seconds between lag pings to a loop (a heartbeat loop is pinged every tick).
PING_EVERY = 0.5

#: A loop switched to per-iteration timing goes back after this long without cuts.
_EXACT_FOR = 30.0


def _frames_of(samples: Counter[RawStack]) -> Counter[tuple[Frame, ...]]:
    """Sampled raw stacks as frames (raw stacks that differ only in loopwatch's frames merge)."""
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for raw, count in samples.items():
        stacks[to_frames(raw)] += count
    return stacks


def _overlap(spans: Iterable[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(end, stop) - max(start, began)) for began, stop in spans
               if stop > start and began < end)


def _where_coroutine_is(coro: Any) -> Frame | None:
    """The line a task's coroutine is at, or where it begins once it has returned."""
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        return Frame(frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name)
    code = getattr(coro, "cr_code", None)
    if code is not None:
        return Frame(code.co_filename, code.co_firstlineno, code.co_name)
    return None


def _running_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    """The task that ``loop`` is running right now, asked from another thread.

    ``current_task(loop)`` answers for a loop running in any thread: up to 3.13
    from the loop -> task table; from 3.14, where each thread keeps its running
    task in its own thread state, by looking through the threads for the one
    running ``loop``. (asyncio's private ``_current_tasks`` table is gone in 3.14.)
    """
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


class Looker:
    """Looks at loops, one probe at a time, and hands on the blocks and cuts it finds."""

    def __init__(
        self,
        gc: GcTimer,
        on_block: Callable[[Found], None],
        on_cut: Callable[[Cut, float], None],
        on_stall: Callable[[Stall, float], None] = lambda stall, end: None,
    ) -> None:
        self._gc = gc
        self._on_block = on_block
        self._on_cut = on_cut
        self._on_stall = on_stall
        #: how long the process did not run before the look in progress (see paused())
        self._pending_pause = (0.0, 0.0)
        #: (began, ended) of the latest stretches the watchdog held the GIL, not run
        self._held: deque[tuple[float, float]] = deque(maxlen=256)
        self._throttling = Throttling()
        self._block_ids = itertools.count(1)
        #: which frames are the program's own (set from the sessions' include/exclude)
        self.user_code = UserCode()
        #: profile mode's profiler, while it runs (its results are attached to blocks)
        self.profiler: Any = None
        #: True while ended iterations are being finished (see finish_ended)
        self.finishing = False

    def idle_look(
        self, probe: Probe, frame: FrameType | None, now: float, threshold: float
    ) -> bool:
        """The most common look, kept lean: the loop waits in select and nothing is due.

        What the full look would do then: count the time since the last look as
        idle, and take a CPU reading as the reference for a block that starts
        next. True if that was all there was to do.
        """
        wd = probe.wd
        last = wd.last
        if (
            last is None
            or wd.seen_start
            or wd.exact_until
            or probe.failure is not None
            or now - wd.pinged >= PING_EVERY
            or wd.watching_cuts(now)
            or not isinstance(probe, SelectorProbe)
            or not probe.selecting(frame)
        ):
            return False
        wd.share.account(now, now - last.at, False)
        # With its run-queue time (a couple of microseconds more): the reference
        # for a block that starts next, which may turn out to be a stall.
        cpu = probe.cpu_quick()
        # when the clock was read: the look may have waited for the GIL since it began
        read_at = time.monotonic()
        self._note_pause(wd, read_at, cpu)
        self._unseen_stall(probe, read_at, cpu, 0.0, threshold)
        wd.last = Reading(read_at, cpu)
        return True

    @staticmethod
    def capture_busy(
        probes: Iterable[Probe], frames: dict[int, FrameType]
    ) -> dict[int, RawStack]:
        """The stacks of loop threads that are not waiting in select, by thread id."""
        stacks = {}
        for probe in probes:
            frame = frames.get(probe.thread_id)
            if frame is not None and not probe.waiting(frame):
                stacks[probe.thread_id] = capture(frame)
        return stacks

    def _unseen_stall(
        self, probe: Probe, now: float, cpu: Clock | None, start: float, threshold: float
    ) -> None:
        """Since the last look the machine did not run the loop's thread for longer than the
        threshold, in no iteration this watchdog saw (it was not run either): a stall."""
        wd = probe.wd
        last = wd.last
        if last is None:
            return
        # Up to where an iteration was finished and judged, the stretch is accounted for.
        begin = max(last.at, wd.finished_to)
        # An iteration in progress is judged when it ends: only what came before it here.
        upto = start or now
        if upto <= begin:
            return  # (one in progress since then spans the stretch)
        paused, held = self._not_run_in(wd, begin, upto)
        ran = cpu[0] - last.cpu[0] if cpu is not None and last.cpu is not None else 0.0
        counted = last.cpu
        if ran > threshold:
            # The loop computed that long meanwhile, in iterations the watchdog did not
            # see (it was kept from the GIL): time queued or held back may be spread
            # over many of them. A stop of the whole process is one stretch, still.
            counted, held = None, 0.0
        lost = min(upto - begin, queued_between(counted, cpu) + paused + held)
        if lost <= threshold:
            return
        wd.finished_to = wd.stall_reported_at = upto
        # Of no known iteration: only how long and why (no stack, task or request).
        observed = Observed(start=upto - lost, end=upto, before=Reading(last.at, counted),
                            cpu_end=cpu, paused=paused, held=held)
        self._on_stall(assemble.stall(
            observed, loop=probe.label, user_code=self.user_code, wall_offset=WALL_OFFSET,
            pid=os.getpid(),
        ), now)

    def paused(self, surely: float, at_most: float) -> None:
        """The whole process did not run for ``surely`` seconds before this look, and for at
        most ``at_most`` (the watchdog woke late and no thread of ours used the CPU; it
        was itself waiting for a CPU for the difference, which a stop also makes it do)."""
        self._pending_pause = (surely, at_most)

    def held_back(self, began: float, ended: float) -> None:
        """This watchdog, holding the GIL, sat waiting for a CPU from ``began`` to ``ended``:
        meanwhile loop threads that wanted the GIL waited for it, through no fault of
        their own (the next look decides, per loop, whether its thread wanted it)."""
        self._held.append((began, ended))

    def _note_pause(
        self,
        wd: Tracking,
        now: float,
        cpu: Clock | None,
        ends: Iterable[float] = (),
        start: float = 0.0,
    ) -> None:
        surely, at_most = self._pending_pause
        if wd.last is None or not (at_most or (self._held and self._held[-1][1] > wd.last.at)):
            return
        before = wd.last.cpu
        window = now - wd.last.at
        queued = queued_between(before, cpu)
        ran = cpu[0] - before[0] if cpu is not None and before is not None else 0.0
        # A loop thread that computed whenever it was not in the gap would have
        # computed in it too: it was stopped. One that slept may have slept through
        # it (the watchdog then merely waited for a CPU): only the sure part counts.
        held = _overlap(self._held, wd.last.at, now)
        rest = window - at_most - queued - held
        computing = rest <= 0 or ran >= rest / 2
        pause = at_most if computing else surely
        # A stopped thread neither runs nor waits for a CPU: whatever this loop's thread
        # spent doing either since the last look was not part of the pause.
        own = min(pause, window - queued - ran)
        if own > LATE:
            # It ended before the loop's thread next ended an iteration (a stopped
            # thread ends none); the watchdog itself may have looked a while after.
            until = min((end for end in ends if wd.last.at + own <= end <= now), default=now)
            if start and now - start < own:
                until = min(until, start)  # the iteration in progress began after it
            wd.pauses.append((until - own, until))
        if computing:
            # It wanted the GIL while this watchdog held it, waiting for a CPU; a thread
            # that slept (time.sleep, I/O) lost nothing then.
            for began, stopped in self._held:
                if stopped > wd.last.at and began < now:
                    wd.held.append((max(began, wd.last.at), min(stopped, now)))

    def _not_run_in(self, wd: Tracking, start: float, end: float) -> tuple[float, float]:
        """(paused, held back) seconds between start and end: see paused() and held_back()."""
        return _overlap(wd.pauses, start, end), _overlap(wd.held, start, end)

    def track(
        self,
        probe: Probe,
        frame: FrameType | None,
        now: float,
        settings: Settings,
        flush: bool,
        late: float = 0.0,
        stack: RawStack | None = None,
    ) -> bool:
        """Sample the probe's loop if it is blocking; finish blocks that ended.

        ``stack``: the loop thread's stack, captured the moment the watchdog woke
        (see :meth:`capture_busy`); taken from ``frame`` now when not given.
        """
        wd = probe.wd
        if flush and probe.alive():
            # A report is wanted now (from any thread): finish the iterations that
            # have ended, and leave the one in progress to the next real look; a
            # look without the loop thread's frame would take it for over.
            self.finish_ended(probe, settings)
            return False
        # Look at the loop before draining ended iterations: the loop thread
        # records an iteration's end before it starts the next one.
        start = probe.busy_since(None if flush else frame, now, settings.heartbeat)
        if start == wd.done:
            start = 0.0  # a stale look at an iteration already finished
        # An idle look's reading is the reference for a block that starts after
        # it, with run-queue time: an iteration the machine did not run is a stall.
        cpu = probe.cpu_quick()
        # when the clock was read: the look may have waited for the GIL since it began
        read_at = time.monotonic()
        if not flush:
            # before the iterations that ended are finished: one may span the pause
            self._note_pause(wd, read_at, cpu, [ended[1] for ended in probe.ended], start)
        # A look that was itself held up (stopped, or kept from the GIL) leaves what
        # ended meanwhile to the next look: a stop then is measured by that look first.
        held_up = not flush and time.monotonic() - now > LATE
        self.finish_ended(probe, settings, now if held_up else math.inf)
        if held_up and start != wd.seen_start and any(
            ended[0] == wd.seen_start for ended in probe.ended
        ):
            return False  # the iteration seen is among them: finished, as seen, next look
        if start != wd.seen_start:
            timed = isinstance(probe, SelectorProbe) and probe.exact
            if wd.seen_start and wd.samples and not timed:
                # It ended but its end was not stamped (the loop stopped in a
                # way we could not see): its length is known to within a tick.
                # (Timed on every iteration, a loop records every slow one: one
                # that is not recorded was short, whenever the watchdog comes back.)
                self._finish(probe, wd.seen_start, now, cpu, settings, resolution="tick")
            wd.before = wd.last
            wd.seen_start = start
            wd.samples = Counter()
            wd.task = wd.coroutine = wd.request = wd.span = wd.task_frame = None
            wd.queued_from = None
            wd.throttled_from = None
            wd.callbacks.clear()
            wd.last_sample, wd.credits = None, {}
            wd.wakes = 1 if start else 0
            wd.late_wakes = 1 if start and late > LATE else 0
            # of the wait before this look, only what overlaps the iteration counts
            wd.late_time = min(late, now - start) if start else 0.0
            wd.watch_from = now - wd.late_time
        elif start:
            wd.wakes += 1
            wd.late_wakes += late > LATE
            wd.late_time += late
        if not flush and wd.last is not None:
            wd.share.account(now, now - wd.last.at, bool(start))
            self._unseen_stall(probe, read_at, cpu, start, settings.threshold)
        previous, wd.last = wd.last, Reading(read_at, cpu)
        age = now - start if start else 0.0
        # Caught at a random moment, an iteration this old is probably over the
        # site threshold (ages are spread evenly over an iteration's length).
        # A garbage collection is not the program's cut: it does not count.
        if (
            start
            and not flush
            and age > settings.site_threshold / 2
            and self._gc.time_in(probe.thread_id, start, now) < age / 2
            and wd.cut_seen(now)
        ):
            self._cut_prone(probe, wd, now)
        if wd.exact_until and now > wd.exact_until and not (settings.precise or settings.profile):
            self._calm(probe, wd)
        speculate = settings.site_threshold / 2 if wd.cuts else settings.speculate
        if not start or flush or age <= speculate or frame is None:
            return False
        if probe.ending:
            return True  # its end is being stamped: what the loop runs now belongs elsewhere
        probe.watch_end(start)
        if wd.queued_from is None:
            # Worth a /proc read now that this iteration may be a block.
            wd.queued_from = probe.cpu_time()
            wd.throttled_from = self._throttling.seconds()
        if probe.profiler is not None:
            probe.profiler.hold()  # a block being watched is profiled to its end
        raw = stack or capture(frame)
        if late > 2 * settings.sample_interval and wd.last_sample is not None:
            # The watchdog waited for the GIL: the loop's thread held it all along,
            # where it was last seen (a C call in progress then); this sample only
            # shows where it let go, after the call returned.
            weight = round(late / settings.sample_interval)
            wd.credits[wd.last_sample] = wd.credits.get(wd.last_sample, 0) + weight
        wd.samples[raw] += 1
        wd.last_sample = raw
        if isinstance(probe, HeartbeatProbe):
            # (the clock at the look before: the reference of a callback seen first now)
            wd.callbacks.sampled(probe.callback_root(frame), now, previous, wd.last)
        if wd.task is None:
            loop = probe.loop
            task = _running_task(loop) if loop is not None else None
            if task is not None:
                wd.task = task.get_name()
                coro = task.get_coro()
                wd.coroutine = getattr(coro, "__qualname__", None) or repr(coro)
                wd.task_frame = _where_coroutine_is(coro)
                wd.request = request_of(task)
                wd.span = span_of(task)
                wd.served = wd.served or wd.request is not None
        return True

    def finish_ended(self, probe: Probe, settings: Settings, until: float = math.inf) -> None:
        """Finish the iterations the loop thread recorded as ended (by ``until``)."""
        if not probe.ended or probe.ended[0][1] > until:
            return
        # Set before the first is taken off the list: a reader flushing from another
        # thread then knows a block is on its way and waits for the look to hand it on.
        self.finishing = True
        try:
            while probe.ended and probe.ended[0][1] <= until:
                began, ended, clock, resolution, callback, tag = probe.ended.popleft()
                self._finish(probe, began, ended, clock, settings, resolution, callback, tag)
        finally:
            self.finishing = False

    def _cut_prone(self, probe: Probe, wd: Tracking, now: float) -> None:
        """The loop keeps having iterations over the site threshold ("a thousand cuts").

        For a while it is timed on every iteration and looked at every
        sample_interval, so that each such iteration is counted and most are
        attributed to a line. One slow iteration (a GC pause, a hiccup of the
        machine) is not enough: the per-iteration cost is paid on evidence.
        """
        wd.cuts = True
        self._go_exact(probe, wd, now)

    def _go_exact(self, probe: Probe, wd: Tracking, now: float) -> None:
        wd.exact_until = now + _EXACT_FOR
        if isinstance(probe, SelectorProbe) and not probe.exact:
            probe.go_exact()

    def _calm(self, probe: Probe, wd: Tracking) -> None:
        """Nothing slow for a while: back to no cost per iteration."""
        wd.exact_until = 0.0
        wd.cuts = False
        wd.cut_looks.clear()
        if isinstance(probe, SelectorProbe):
            probe.go_sampled()

    def stalled(self, probes: list[Probe], late: float) -> list[str]:
        """The watchdog could not run for longer than the threshold.

        If a loop thread kept computing meanwhile, it held the GIL (a C call
        such as json.loads), and if its iteration ended during the stall the
        block was never seen: such loops are timed on every iteration for a
        while, which costs a little per iteration but misses nothing. If the
        loop thread hardly ran either, the whole process was starved of CPU:
        nothing to learn there. Returns what to tell the sessions.
        """
        now = time.monotonic()
        messages = []
        for probe in probes:
            if not isinstance(probe, SelectorProbe) or probe.exact or probe.want_exact:
                continue
            loop = probe.loop
            if loop is None or not loop.is_running():
                continue  # its thread computing is not this loop's doing
            before, cpu = probe.wd.last, probe.cpu_quick()
            if before is None or before.cpu is None or cpu is None:
                continue
            if cpu[0] - before.cpu[0] < 0.5 * late:
                continue
            self._go_exact(probe, probe.wd, now)
            message = (
                f"the watchdog could not run for {late * 1000:.0f} ms while "
                f"{probe.label} kept computing (a C call holding the GIL, or short "
                "iterations that let go of it only for moments): the loop is timed on every "
                "iteration for a while, so that no block goes unseen"
            )
            logger.info(message)
            messages.append(message)
        return messages

    @staticmethod
    def attach_dump(
        probes: list[Probe],
        fired_at: float,
        stacks: dict[int, tuple[Frame, ...]],
        settings: Settings,
    ) -> None:
        """A deadman dump: each loop's stack in it is kept for the block it fell in."""
        # The dump stands for the whole stretch the watchdog could not run.
        weight = max(1, round(settings.deadman_timeout / settings.sample_interval))
        for probe in probes:
            frames = stacks.get(probe.thread_id)
            if frames:
                wd = probe.wd
                wd.dumps.append((fired_at, frames, weight))
                del wd.dumps[:-16]

    def _finish(
        self,
        probe: Probe,
        start: float,
        end: float,
        cpu_end: Clock | None,
        settings: Settings,
        resolution: str | None = None,
        callback: str | None = None,
        tag: int = 0,
    ) -> None:
        wd = probe.wd
        if start == wd.done:
            return  # stamped twice (a hook and a fallback both saw it end): keep the first
        seen = start == wd.seen_start
        samples = wd.samples if seen else Counter()
        reference = wd.before if seen else wd.last
        ended = wd.ended_at
        if ended is not None and ended.at <= start and (
            reference is None or ended.at > reference.at
        ):
            # The previous iteration's end is a closer reference than a look taken
            # during it: this iteration must not count that one's tail.
            reference = ended
        if cpu_end is not None:
            wd.ended_at = Reading(end, cpu_end)
        dumps = [(frames, weight) for at, frames, weight in wd.dumps if start <= at <= end]
        wd.dumps = [d for d in wd.dumps if d[0] > end]
        wd.done = start
        wd.finished_to = max(wd.finished_to, end)
        if seen:
            # finished: not to be finished again (by a tick) when the loop moves on
            wd.samples = Counter()
            wd.seen_start = -1.0
        blocking = wd.callbacks.blocking(start, end) if seen else None
        if blocking is not None:
            # A heartbeat loop: the block is the callback that blocked (sampled most),
            # not every callback between the ping and its answer.
            start, end, before = blocking
            reference = before or reference
        paused, held = self._not_run_in(wd, start, end)
        if start < wd.stall_reported_at:
            # The stretch up to then was reported as a stall from the looks around it.
            start = min(end, wd.stall_reported_at)
        gc_time = self._gc.time_in(probe.thread_id, start, end)
        observed = Observed(
            start=start,
            end=end,
            before=reference,
            cpu_end=cpu_end,
            queued_from=wd.queued_from if seen else None,
            stacks=_frames_of(samples),
            dumps=dumps,
            credits=_frames_of(Counter(wd.credits)) if seen else {},
            task=wd.task if seen else None,
            coroutine=wd.coroutine if seen else None,
            task_frame=wd.task_frame if seen else None,
            request=wd.request if seen else None,
            callback=callback,
            wakes=wd.wakes if seen else 0,
            late_wakes=wd.late_wakes,
            late_time=wd.late_time,
            watch_from=wd.watch_from,
            gc_time=gc_time,
            gc_generation=self._gc.generation_in(probe.thread_id, start, end),
            resolution=resolution or probe.resolution,
            paused=paused,
            held=held,
            throttled=self._throttled_since(wd) if seen else None,
            startup=not wd.served,
        )
        span, wd.span = (wd.span if seen else None), None
        found = assemble.verdict(
            observed, threshold=settings.threshold, site_threshold=settings.site_threshold
        )
        if found == "stall":
            # Slow only because the machine did not run the loop's thread: a stall
            # is never a block, cut or site.
            self._on_stall(assemble.stall(
                observed, loop=probe.label, user_code=self.user_code, wall_offset=WALL_OFFSET,
                pid=os.getpid(),
            ), end)
            return
        if found == "none":
            return
        if gc_time < observed.duration / 2:
            # A garbage collection is not the program's cut.
            if wd.cuts:
                wd.exact_until = max(wd.exact_until, end + _EXACT_FOR)
            elif wd.cut_seen(end):
                self._cut_prone(probe, wd, end)
        if found == "cut":
            self._on_cut(assemble.cut(observed, loop=probe.label, user_code=self.user_code), end)
            return
        wd.blocks += 1
        block = assemble.block(
            replace(observed, functions=self._functions(tag)),
            block_id=next(self._block_ids),
            loop=probe.label,
            user_code=self.user_code,
            wall_offset=WALL_OFFSET,
            pid=os.getpid(),  # read each time: a forked child is another process
        )
        wd.served = wd.served or block.request is not None
        self._on_block(Found(block, start, end, span))

    def _throttled_since(self, wd: Tracking) -> float | None:
        """Seconds the cgroup was throttled since the iteration was first sampled, if known."""
        if wd.throttled_from is None:
            return None
        now = self._throttling.seconds()
        return None if now is None else max(0.0, now - wd.throttled_from)

    def _functions(self, tag: int) -> tuple[FunctionStat, ...]:
        profiler = self.profiler
        if not tag or profiler is None:
            return ()
        try:
            return profiler.functions(tag)  # type: ignore[no-any-return]
        except Exception:
            log_once("profiler-functions", "loopwatch could not read yappi's results for a block")
            return ()

    def loop_stats(self, probe: Probe) -> LoopStats:
        end = probe.detached_at or time.monotonic()
        wd = probe.wd
        lags = sorted(probe.lags)
        return LoopStats(
            loop=probe.label,
            iterations=probe.iterations,
            busy=probe.busy,
            watched=end - probe.attached_at,
            blocks=wd.blocks,
            resolution=probe.resolution,
            busy_fraction_sampled=wd.share.overall,
            worst_window=wd.share.worst,
            last_window=wd.share.last,
            lag_p50=percentile(lags, 50) if lags else None,
            lag_p95=percentile(lags, 95) if lags else None,
            lag_p99=percentile(lags, 99) if lags else None,
            lag_max=lags[-1] if lags else None,
            pid=os.getpid(),
            timeline=_timeline(wd.share.history, list(probe.lags_at)),
        )


def _timeline(
    windows: Iterable[tuple[float, float]], lags: list[tuple[float, float]]
) -> tuple[tuple[float, float, float | None], ...]:
    """(wall-clock start, busy share, worst lag) of each whole window, oldest first."""
    points = []
    index = 0
    for start, share in windows:
        end = start + WINDOW
        while index < len(lags) and lags[index][0] < start:
            index += 1
        worst: float | None = None
        while index < len(lags) and lags[index][0] < end:
            lag = lags[index][1]
            worst = lag if worst is None or lag > worst else worst
            index += 1
        points.append((round(start + WALL_OFFSET, 3), round(share, 4),
                       None if worst is None else round(worst, 5)))
    return tuple(points)
