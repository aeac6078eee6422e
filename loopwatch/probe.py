"""Per-loop instrumentation: tells the watchdog when the current iteration began.

A loop iteration is busy from the moment ``select`` returns until the next
``select`` call. Three kinds of probe find that out, cheapest first:

* :class:`SelectorProbe`, by default, costs nothing per iteration. asyncio's
  ``_run_once`` stores the iteration's start time in its local ``end_time``
  right after ``select`` returns; the watchdog reads it from the loop thread's
  frame when it looks (every ``0.8 * threshold``). Once an iteration has been
  busy for a tenth of the threshold, a one-shot wrapper is put on ``select`` that
  stamps the exact end of that iteration (in the loop thread) and removes
  itself. So blocks have exact durations, and quiet loops pay nothing.
* ``SelectorProbe`` in exact mode wraps ``select`` for every iteration (two
  clock reads, a few attribute writes): used for loops whose class replaces
  ``_run_once``, and when every iteration must be timed.
* :class:`HeartbeatProbe` is for loops without a Python-level selector
  (uvloop): the watchdog pings the loop with ``call_soon_threadsafe`` and the
  lag until the pong runs is the busy time, to within one heartbeat.

Loops are found by :class:`Discovery`, which patches ``run_forever`` of
asyncio's ``BaseEventLoop`` and of ``uvloop.Loop`` (new runs), and by
:func:`running_loops` (loops already running, from their threads' stacks).
:meth:`Discovery.remove` undoes every patch.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from loopwatch._core.assemble import Clock
from loopwatch._core.imports import AfterImport
from loopwatch._core.tracker import Tracking
from loopwatch._core.wakeup import DUE, YIELD_AFTER, Door, DoorTimer, Due
from loopwatch._log import log_once

#: iteration start, end (time.monotonic, the loop's clock), the loop thread's Clock at the
#: end, the resolution when it is not the probe's own ("tick": the end is approximate),
#: (precise mode) the slowest callback of the iteration, and (profile mode) its profiler tag
Ended = tuple[float, float, "Clock | None", "str | None", "str | None", int]

_ENDED_KEEP = 4096
_LAGS_KEEP = 4096
_loop_numbers = itertools.count(1)
_BASE_LOOP = asyncio.base_events.BaseEventLoop
_RUN_ONCE = _BASE_LOOP.__dict__["_run_once"]
_RUN_ONCE_CODE = _RUN_ONCE.__code__


def _gil_keeping_pread() -> Any:
    try:
        libc = ctypes.PyDLL(None)  # PyDLL: calls keep the GIL
        pread = libc.pread
    except (OSError, AttributeError):
        return None
    pread.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long)
    pread.restype = ctypes.c_ssize_t
    return pread


_PREAD = _gil_keeping_pread() if sys.platform.startswith("linux") else None


class ThreadClock:
    """CPU time of one thread, readable from any thread.

    On Linux it also reads how long the thread sat runnable waiting for a CPU
    (``/proc/.../schedstat``): on a busy machine, that time is neither computing
    nor waiting on I/O, and leaving it out keeps ``cpu_ratio`` honest.
    """

    def __init__(self, thread_id: int, native_id: int | None) -> None:
        #: the thread's kernel id: a later thread may be given the same thread_id
        self.native_id = native_id
        self._fd: int | None = None
        self._clock: int | None = None
        self._buffer = ctypes.create_string_buffer(64)
        try:
            self._clock = time.pthread_getcpuclockid(thread_id)
        except (AttributeError, OSError):  # not on this platform, or the thread is gone
            self._clock = None
        if native_id is not None:
            try:
                self._fd = os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
                self.read()
            except OSError:
                self.close()

    def quick(self) -> Clock | None:
        """Like read(), without letting go of the GIL.

        The watchdog reads it every tick; each time it let go of the GIL, a
        busy loop thread would take it and make the watchdog wait for it back,
        a round trip the loop pays for. libc's pread called through
        ``ctypes.PyDLL`` keeps the GIL; where that is not available, only the
        CPU clock is read.
        """
        if self._fd is not None and _PREAD is not None:
            got = _PREAD(self._fd, self._buffer, 64, 0)
            if got > 0:
                try:
                    running, queued, _ = self._buffer.raw[:got].split()
                    return int(running) / 1e9, int(queued) / 1e9
                except ValueError:
                    pass
        return self._cpu_clock() or self.read()

    def cpu_only(self) -> Clock | None:
        """CPU time alone (no run-queue time): the cheapest reading, for idle looks.

        One system call; reading /proc through ctypes costs a watchdog woken
        with cold caches three to four times as much.
        """
        return self._cpu_clock() or self.quick()

    def read(self) -> Clock | None:
        """CPU time and run-queue time (reading /proc lets go of the GIL)."""
        if self._fd is not None:
            try:
                running, queued, _ = os.pread(self._fd, 64, 0).split()
                return int(running) / 1e9, int(queued) / 1e9
            except (OSError, ValueError):
                self.close()
        return self._cpu_clock()

    def _cpu_clock(self) -> Clock | None:
        """The thread's CPU clock alone, or None once it cannot be read (the thread ended)."""
        if self._clock is not None:
            try:
                return time.clock_gettime(self._clock), None
            except OSError:
                self._clock = None
        return None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def describe_handle(handle: Any, seconds: float) -> str:
    """``Task 'name' step of coro() (app.py:12), 153 ms`` or the callback's name and place."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
        name = getattr(coro, "__qualname__", type(coro).__name__)
        what = f"Task {owner.get_name()!r} step of {name}(){where}"
    else:
        target = getattr(callback, "__func__", callback)
        code = getattr(target, "__code__", None)
        name = getattr(target, "__qualname__", None) or repr(target)
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
        what = f"callback {name}(){where}"
    return f"{what}, {seconds * 1000:.0f} ms"


def _stock_run_once(cls: type) -> bool:
    """True if the class runs BaseEventLoop's own _run_once (ours may be patched in)."""
    for klass in cls.__mro__:
        if "_run_once" in klass.__dict__:
            return klass is _BASE_LOOP
    return False


def _thread_name(thread_id: int) -> str:
    thread = threading._active.get(thread_id)  # type: ignore[attr-defined]
    return thread.name if thread is not None else f"thread {thread_id:#x}"


class Probe:
    """What the watchdog needs from a watched loop; subclasses fill in how."""

    resolution = "exact"
    #: whether every iteration (or heartbeat) is counted from the start
    counts_iterations = False

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread_id: int,
        native_id: int | None,
        clock: ThreadClock | None = None,
    ) -> None:
        self.loop_ref = weakref.ref(loop)
        self.thread_id = thread_id
        self.label = f"{type(loop).__name__}#{next(_loop_numbers)} ({_thread_name(thread_id)})"
        #: profile mode: the profiler, and the current iteration's tag
        self.profiler: Any = None
        self.tag = 0
        #: precise mode: the slowest callback of the current iteration (seconds, handle)
        self.slowest: tuple[float, Any] | None = None
        #: True while the loop has left an iteration whose end is about to be stamped
        self.ending = False
        #: slow iterations that ended, for the watchdog to pick up (appended in the loop thread)
        self.ended: deque[Ended] = deque(maxlen=_ENDED_KEEP)
        #: iterations longer than this are recorded in ``ended`` (exact and heartbeat modes)
        self.slow_threshold = 0.05
        #: how the loop's thread lets an overdue watchdog in: from select in exact mode,
        #: and from a timer on the loop (started in the loop's thread: start_in_loop)
        self.door = Door()
        self.door_timer = DoorTimer(loop, self.door, self.fail)
        #: iterations counted and busy seconds summed (exact and heartbeat modes only)
        self.iterations: int | None = 0 if self.counts_iterations else None
        self.busy = 0.0
        self.attached_at = time.monotonic()
        self.detached_at: float | None = None
        # A shared clock belongs to whoever shares it; our own, we close.
        self._own_clock = clock is None
        self._clock = clock if clock is not None else ThreadClock(thread_id, native_id)
        #: event-loop lag: how late each of the watchdog's pings ran (seconds)
        self.lags: deque[float] = deque(maxlen=_LAGS_KEEP)
        #: (when it was answered, lag) of the latest pings, for the timeline
        self.lags_at: deque[tuple[float, float]] = deque(maxlen=_LAGS_KEEP)
        self._ping_sent = 0.0
        self._generation = 0
        #: what the watchdog keeps of this loop between looks (only the watchdog touches it)
        self.wd = Tracking()
        #: set (to where it happened) when loopwatch failed inside the loop's thread:
        #: the watchdog then stops watching this loop
        self.failure: str | None = None

    def fail(self, where: str) -> None:
        """Called in the loop thread from an ``except`` block: give up on this loop, quietly.

        The loop itself must go on as if loopwatch were not there.
        """
        self.failure = where
        self.log_failure(where)

    def log_failure(self, where: str) -> None:
        """Say once per kind of failure (with its traceback) that this loop is given up."""
        log_once(
            f"give-up {where}",
            f"loopwatch stopped watching {self.label} after an internal error in {where}; "
            "the program and its other loops are not affected",
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.loop_ref()

    def slowest_callback(self) -> str | None:
        """Describe the slowest callback of this iteration (precise mode), in the loop thread."""
        slowest = self.slowest
        if slowest is None:
            return None
        try:
            return describe_handle(slowest[1], slowest[0])
        except Exception:  # a repr that fails must not break the loop
            return None

    def cpu_time(self) -> Clock | None:
        """The loop thread's CPU and run-queue seconds so far (readable from any thread)."""
        return self._clock.read()

    def cpu_quick(self) -> Clock | None:
        """The loop thread's CPU seconds so far, cheaply and without releasing the GIL."""
        return self._clock.quick()

    def cpu_only(self) -> Clock | None:
        """The loop thread's CPU seconds alone, as cheaply as it can be read."""
        return self._clock.cpu_only()

    def alive(self) -> bool:
        loop = self.loop_ref()
        return loop is not None and not loop.is_closed() and self.detached_at is None

    def busy_since(self, frame: FrameType | None, now: float, heartbeat: float) -> float:
        """When the iteration in progress began (loop clock), or 0.0 when idle.

        ``frame`` is the loop thread's innermost frame; called by the watchdog.
        """
        raise NotImplementedError

    def watch_end(self, start: float) -> None:
        """Make sure the end of the iteration that began at ``start`` is stamped exactly."""

    def waiting(self, frame: FrameType) -> bool:
        """Whether the loop thread (innermost ``frame``) surely waits for events, not busy."""
        return False

    def ping(self, now: float) -> None:
        """Schedule a pong on the loop from the watchdog thread, unless one is pending."""
        if self._ping_sent:
            return
        loop = self.loop_ref()
        if loop is None or not loop.is_running():
            return
        self._ping_sent = now
        try:
            loop.call_soon_threadsafe(self._pong, now, self._generation)
        except RuntimeError:  # closed between the check and the call
            self._ping_sent = 0.0

    def _pong(self, sent: float, generation: int) -> None:
        if generation != self._generation:
            return  # sent before the loop stopped: its lag includes the pause
        try:
            now = time.monotonic()
            self.lags.append(now - sent)
            self.lags_at.append((now, now - sent))
            self._answered(sent, now)
        except Exception:
            self.fail("the heartbeat")
        self._ping_sent = 0.0

    def _answered(self, sent: float, now: float) -> None:
        """A ping sent at ``sent`` ran at ``now`` (in the loop thread)."""

    def run_ended(self) -> None:
        """The loop's run_forever returned: the iteration in progress (if any) is over."""
        self._ping_sent = 0.0
        self._generation += 1

    def start_in_loop(self) -> None:
        """What the probe runs in the loop's own thread (called there, as its run starts)."""
        self.door_timer.start()

    def detach(self) -> None:
        if self.detached_at is None:
            self.detached_at = time.monotonic()
        self.door_timer.stop()
        if self._own_clock:
            self._clock.close()


class SelectorProbe(Probe):
    """Times iterations of an asyncio selector loop (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread_id: int,
        native_id: int | None,
        clock: ThreadClock | None = None,
        exact: bool = False,
    ) -> None:
        super().__init__(loop, thread_id, native_id, clock)
        self._selector: Any = loop._selector  # type: ignore[attr-defined]
        select = type(self._selector).select
        self._idle_code = getattr(select, "__code__", None)
        self._clock_resolution: float = getattr(loop, "_clock_resolution", 0.0)
        # Sampled mode needs the stock _run_once, whose frame holds the start time.
        self.exact = exact or not _stock_run_once(type(loop))
        self.want_exact = False
        #: exact mode: loop clock when the current iteration began; 0.0 while idle
        self.iter_start = 0.0
        self._wrapper: Callable[..., Any] | None = None
        # Iterations are told apart by their start (``end_time`` in _run_once's
        # frame), never by keeping the frame: a frame kept past the look keeps
        # its locals alive (the callback's handle and what it was given).
        #: the iteration in progress at the last look: its end_time, 0.0 if none
        self._current = 0.0
        #: the iteration whose end the select hook waits to stamp (its end_time)
        self._end_armed_for = 0.0
        #: the last iteration the hook was armed for: never armed twice
        self._end_last_armed = 0.0
        self._end_armed_start = 0.0
        # The hook (loop thread) and the watchdog both may stamp an end: one must win.
        self._end_lock = threading.Lock()
        if self.exact:
            self.iterations = 0
            self._wrapper = _make_select(self, self._selector.select)
            self._selector.select = self._wrapper
            # Attached from inside an iteration (discovery runs at its start).
            self.iter_start = time.monotonic()

    def go_exact(self) -> None:
        """Time every iteration from now on (wraps ``select``); see the module docstring."""
        self.want_exact = True

    def exact_from_first_iteration(self) -> None:
        """Switch now, in the loop's thread before its first iteration (none is in progress)."""
        if self.want_exact and not self.exact:
            self._switch_to_exact(0.0)

    def go_sampled(self) -> None:
        """Back to no cost per iteration (only for loops that were switched to exact mode)."""
        self.want_exact = False
        if not self.exact or not _stock_run_once(type(self.loop_ref())):
            return
        if self._selector.__dict__.get("select") is self._wrapper:
            del self._selector.select
        self.exact = False
        self.iter_start = 0.0
        self._current = 0.0

    def _switch_to_exact(self, current_start: float) -> None:
        self.want_exact = False
        self.exact = True
        self.iterations = 0
        # The iteration in progress keeps the start read from its frame, if the
        # loop is still inside it (the frame we were given may be a moment old).
        inside = current_start and self._current and self._inside(self._current)
        self.iter_start = current_start if inside else 0.0
        self._wrapper = _make_select(self, self._selector.select)
        self._selector.select = self._wrapper

    def selecting(self, frame: FrameType | None) -> bool:
        """Whether the loop thread (innermost ``frame``) waits in select with nothing pending.

        The watchdog's cheap look: no iteration in progress, none ended and
        waiting to be finished, no end hook armed, no change of mode pending.
        """
        return (
            frame is not None
            and frame.f_code is self._idle_code
            and not self.exact
            and not self.want_exact
            and not self.ended
            and not self._end_armed_for
        )

    def waiting(self, frame: FrameType) -> bool:
        return frame.f_code is self._idle_code

    def busy_since(self, frame: FrameType | None, now: float, heartbeat: float) -> float:
        if self.exact:
            return self.iter_start
        start = self._sampled_start(frame)
        if self.want_exact and not self._end_armed_for and frame is not None:
            # Not on a look without the loop thread's frame (a flush passes none):
            # an iteration in progress would go untimed. (Between iterations, the
            # one after the select in progress does; the watchdog may not look
            # again soon: kept from the GIL is one reason to switch.)
            self._switch_to_exact(start)
        return start

    def _sampled_start(self, frame: FrameType | None) -> float:
        end_time = self._iteration_of(frame)
        armed = self._end_armed_for
        self.ending = bool(armed) and armed != end_time
        if self.ending:
            # The loop has left the iteration but has not reached the hook that
            # stamps its end yet: it is still the iteration in progress for us.
            return self._end_armed_start
        # No end_time: selecting, between runs, in run_forever's set-up, in another
        # loop's iteration, or in an iteration whose select has not returned yet.
        self._current = end_time or 0.0
        if not end_time:
            return 0.0
        return end_time - self._clock_resolution

    def _iteration_of(self, frame: FrameType | None) -> float | None:
        """When the iteration the loop thread (innermost ``frame``) is in began, or None.

        That is _run_once's local ``end_time``, which asyncio sets right after
        select returns. None while selecting, outside an iteration, or in another
        loop's iteration on this thread (pytest-asyncio keeps a stopped
        module-scoped loop beside the running one). Read at each look and not
        cached with the frame: holding the frame would hold its locals.
        """
        if frame is None or frame.f_code is self._idle_code:
            return None
        run_once = self._find(frame)
        if run_once is None:
            return None
        local = run_once.f_locals
        if local.get("self") is not self.loop_ref():
            return None
        end_time = local.get("end_time")
        return float(end_time) if isinstance(end_time, (int, float)) else None

    def watch_end(self, start: float) -> None:
        armed_for = self._current
        if self.exact or not armed_for or self._end_last_armed == armed_for:
            return  # never twice for one iteration: the second would stamp a later end
        self._end_armed_for = self._end_last_armed = armed_for
        self._end_armed_start = start
        selector = self._selector
        select = selector.select
        probe = self

        def select_once(timeout: float | None = None) -> Any:
            try:
                # The first select after arming ends the iteration we were armed for.
                if selector.__dict__.get("select") is select_once:
                    del selector.select
                with probe._end_lock:
                    if probe._end_armed_for == armed_for:
                        # Record first, disarm second: the watchdog may look in between
                        # (reading the clock releases the GIL) and must still see it armed.
                        end = time.monotonic()
                        probe.ended.append((start, end, probe.cpu_time(), None, None, 0))
                        probe._end_armed_for = 0.0
            except Exception:
                probe.fail("the select hook")
            return select(timeout)

        selector.select = select_once
        # If the loop reached select before the hook was in place, the hook
        # would stamp a later iteration's end: check that it is still inside.
        if not self._inside(armed_for):
            if selector.__dict__.get("select") is select_once:
                del selector.select
            with self._end_lock:
                if self._end_armed_for == armed_for:
                    # It ended a moment ago, between our look and the hook.
                    self.ended.append((start, time.monotonic(), self.cpu_time(), "tick", None, 0))
                    self._end_armed_for = 0.0

    @staticmethod
    def _find(frame: FrameType | None) -> FrameType | None:
        while frame is not None and frame.f_code is not _RUN_ONCE_CODE:
            frame = frame.f_back
        return frame

    def _inside(self, iteration: float) -> bool:
        """Whether the loop thread is still in the iteration whose ``end_time`` is given."""
        return self._iteration_of(sys._current_frames().get(self.thread_id)) == iteration

    def run_ended(self) -> None:
        now = time.monotonic()
        if self.exact and self.iter_start:
            self.ended.append((self.iter_start, now, self.cpu_time(), None, None, self.tag))
            self.iter_start = 0.0
        with self._end_lock:
            if self._end_armed_for:
                hook = self._selector.__dict__.get("select")
                if getattr(hook, "__name__", "") == "select_once":
                    del self._selector.select
                self.ended.append((self._end_armed_start, now, self.cpu_time(), None, None, 0))
                self._end_armed_for = 0.0
        self._current = 0.0
        super().run_ended()

    def detach(self) -> None:
        super().detach()
        current = self._selector.__dict__.get("select")
        if current is not None and (
            current is self._wrapper or getattr(current, "__name__", "") == "select_once"
        ):
            del self._selector.select
        self.iter_start = 0.0
        self._current = 0.0
        self._end_armed_for = self._end_last_armed = 0.0


def _make_select(probe: SelectorProbe, select: Callable[..., Any]) -> Callable[..., Any]:
    # Exact mode's hot path, once per loop iteration. Locals bound as defaults
    # avoid global look-ups; the slow branch is taken only by long iterations.
    def watched_select(
        timeout: float | None = None,
        _probe: SelectorProbe = probe,
        _select: Callable[..., Any] = select,
        _clock: Callable[[], float] = time.monotonic,
        # keeps the GIL: the watchdog must not look between marking the iteration over
        # and recording it (it would finish it alone, without the callback's name)
        _cpu: Callable[[], Clock | None] = probe.cpu_quick,
        _due: Due = DUE,
        _door: Door = probe.door,
    ) -> Any:
        start = _probe.iter_start
        if start:
            try:
                now = _clock()
                busy = now - start
                _probe.busy += busy
                _probe.iterations += 1  # type: ignore[operator]
                _probe.iter_start = 0.0
                if busy > _probe.slow_threshold:
                    _probe.ended.append(
                        (start, now, _cpu(), None, _probe.slowest_callback(), _probe.tag)
                    )
                _probe.slowest = None
                if now - _due.at > YIELD_AFTER:
                    # The watchdog waits for the GIL, which this thread takes back each
                    # time it lets go in select, before the watchdog has woken (see Due).
                    _door.let_in(now)
            except Exception:
                _probe.fail("the select wrapper")
        events = _select(timeout)
        _probe.iter_start = _clock()
        if _probe.profiler is not None:
            try:
                _probe.tag = _probe.profiler.begin_iteration()
            except Exception:
                _probe.fail("the profiler")
        return events

    return watched_select


class HeartbeatProbe(Probe):
    """Measures the lag of a loop that has no Python-level selector (uvloop).

    The watchdog pings it every heartbeat; an unanswered ping means the loop
    has been busy at least since the ping was sent.
    """

    resolution = "heartbeat"
    counts_iterations = True

    def busy_since(self, frame: FrameType | None, now: float, heartbeat: float) -> float:
        sent = self._ping_sent
        return sent if sent and now - sent > heartbeat else 0.0

    def start_in_loop(self) -> None:
        super().start_in_loop()
        self.ping_at_start()

    def ping_at_start(self) -> None:
        """In the loop's thread, as its run starts: a ping queued behind its first callbacks.

        A block in them then counts from the run's start, not from the
        watchdog's first ping, which may come a tick later (most of a block).
        """
        loop = self.loop_ref()
        if loop is None or self._ping_sent:
            return
        now = time.monotonic()
        self._ping_sent = now
        loop.call_soon(self._pong, now, self._generation)

    @staticmethod
    def callback_root(frame: FrameType | None) -> int | None:
        """Which callback the loop thread (innermost ``frame``) runs: the id of its outermost
        frame, just inside the loop's own ``run_forever``; None while in the loop's C code.

        A heartbeat only says the loop has been busy since a ping was sent; the
        samples say when the callback that blocked began (the loop may have run
        others before it, since that ping).
        """
        inner = None
        while frame is not None:
            if frame.f_code in _LOOP_RUNNERS:
                return None if inner is None else id(inner)
            inner, frame = frame, frame.f_back
        return None

    def _answered(self, sent: float, now: float) -> None:
        lag = now - sent
        self.iterations += 1  # type: ignore[operator]
        self.busy += lag
        if lag > self.slow_threshold:
            self.ended.append((sent, now, self.cpu_time(), None, None, 0))

    def run_ended(self) -> None:
        if self._ping_sent:
            now = time.monotonic()
            if now - self._ping_sent > self.slow_threshold:
                self.ended.append((self._ping_sent, now, self.cpu_time(), None, None, 0))
        super().run_ended()


def make_probe(
    loop: asyncio.AbstractEventLoop, thread_id: int, clocks: dict[int, ThreadClock] | None = None
) -> Probe:
    """The right probe for this loop; ``clocks`` caches one CPU clock per thread."""
    thread = threading._active.get(thread_id)  # type: ignore[attr-defined]
    native_id = getattr(thread, "native_id", None)
    clock = None
    if clocks is not None:
        clock = clocks.get(thread_id)
        if clock is not None and clock.native_id != native_id:
            # Python reuses the ids of threads that ended: that clock was another thread's.
            clock.close()
            clock = None
        if clock is None:
            clock = clocks[thread_id] = ThreadClock(thread_id, native_id)
    selector = getattr(loop, "_selector", None)
    if isinstance(loop, _BASE_LOOP) and callable(getattr(selector, "select", None)):
        return SelectorProbe(loop, thread_id, native_id, clock)
    return HeartbeatProbe(loop, thread_id, native_id, clock)


_UNSEEN = object()

#: Code of the frames a loop's callbacks run inside of: the patched ``run_forever``,
#: and asyncio's Runner.run (a loop already running when the watch began).
_LOOP_RUNNERS: set[Any] = {asyncio.runners.Runner.run.__code__}


class Discovery:
    """Finds every loop that runs while installed and reports runs starting and ending.

    New runs are caught by patching ``run_forever`` (asyncio's and uvloop's):
    ``on_loop(loop)`` is called in the loop's thread when a run starts and
    ``on_run_end(loop)`` when it returns. uvloop is patched the moment it is
    imported (an import hook), so ``import uvloop; uvloop.run(main())`` after
    the watch began is caught from its first iteration. Loops that were already
    running are found by :func:`running_loops` (asyncio's ``run_forever`` frames)
    and :func:`loops_in_locals` (uvloop's, whose ``run_forever`` has no frame),
    which are then attached from their own thread (:meth:`attach_in_own_thread`).
    """

    def __init__(
        self,
        on_loop: Callable[[asyncio.AbstractEventLoop], None],
        on_run_end: Callable[[asyncio.AbstractEventLoop], None],
    ) -> None:
        self._on_loop = on_loop
        self._on_run_end = on_run_end
        self._installed = False
        self._patches: list[tuple[type, str, Any]] = []
        #: the uvloop module (or None) that patch_uvloop last saw
        self._uvloop_seen: Any = _UNSEEN
        self._after_import = AfterImport({"uvloop"}, lambda module: self.patch_uvloop())
        #: loops asked to report from their own thread, not yet heard from
        self._asked: weakref.WeakSet[Any] = weakref.WeakSet()

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        self._patch_run_forever(_BASE_LOOP)
        self._after_import.install()
        self.patch_uvloop()

    def patch_uvloop(self) -> None:
        """Patch uvloop if it has been imported since (cheap to call repeatedly)."""
        uvloop = sys.modules.get("uvloop")
        if uvloop is self._uvloop_seen:
            return
        self._uvloop_seen = uvloop
        cls = getattr(uvloop, "Loop", None)
        if self._installed and isinstance(cls, type) and "run_forever" not in cls.__dict__:
            self._patch_run_forever(cls)

    def _patch_run_forever(self, cls: type) -> None:
        original = cls.run_forever  # type: ignore[attr-defined]
        discovery = self

        def run_forever(loop: Any) -> None:
            discovery._found(loop)
            try:
                original(loop)
            finally:
                discovery._ended(loop)

        run_forever.__loopwatch__ = True  # type: ignore[attr-defined]
        _LOOP_RUNNERS.add(run_forever.__code__)
        self._patches.append((cls, "run_forever", cls.__dict__.get("run_forever")))
        cls.run_forever = run_forever  # type: ignore[attr-defined]

    def attach_in_own_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """A running loop whose thread is not known: it reports itself from that thread.

        For loops found by :func:`loops_in_locals`: a callback sent with
        ``call_soon_threadsafe`` runs in the loop's thread, where it is found
        as if its run had just started.
        """
        if loop in self._asked:
            return
        self._asked.add(loop)
        try:
            loop.call_soon_threadsafe(self._found, loop)
        except RuntimeError:
            pass  # closed meanwhile

    def _found(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asked.discard(loop)
        if not self._installed:
            return  # a late answer to attach_in_own_thread, after the watch
        try:
            self._on_loop(loop)
        except Exception:
            log_once("discovery", "loopwatch could not attach to an event loop; it is not watched")

    def _ended(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._on_run_end(loop)
        except Exception:
            log_once("run-end", "loopwatch failed to note the end of a loop run")

    def remove(self) -> None:
        if not self._installed:
            return
        self._installed = False
        self._uvloop_seen = _UNSEEN
        self._after_import.remove()
        self._asked = weakref.WeakSet()
        for cls, name, original in reversed(self._patches):
            if getattr(cls.__dict__.get(name), "__loopwatch__", False):
                if original is None:
                    delattr(cls, name)
                else:
                    setattr(cls, name, original)
        self._patches = []


_RUN_FOREVER_CODE = _BASE_LOOP.__dict__["run_forever"].__code__


def running_loops(frames: dict[int, FrameType]) -> list[tuple[int, asyncio.AbstractEventLoop]]:
    """(thread id, loop) for every asyncio loop whose run_forever is on a thread's stack."""
    found: list[tuple[int, asyncio.AbstractEventLoop]] = []
    for thread_id, frame in frames.items():
        current: FrameType | None = frame
        while current is not None:
            if current.f_code is _RUN_FOREVER_CODE:
                loop = current.f_locals.get("self")
                if isinstance(loop, _BASE_LOOP):
                    found.append((thread_id, loop))
                break
            current = current.f_back
    return found


#: How many of a thread's outermost frames loops_in_locals reads: where a program
#: starts its loop (``asyncio.run``'s runner, ``uvloop.run``, a server's ``run``).
_OUTER_FRAMES = 40


def loops_in_locals(frames: dict[int, FrameType]) -> list[asyncio.AbstractEventLoop]:
    """Running loops other than asyncio's own, referenced from the threads' outer frames.

    A uvloop loop runs in C: no ``run_forever`` frame names it. The frame that
    started it does (``Runner.run``'s ``self._loop``, a ``loop`` variable). Which
    thread runs it is not known from here: see :meth:`Discovery.attach_in_own_thread`.
    """
    found: dict[int, asyncio.AbstractEventLoop] = {}
    for frame in frames.values():
        chain: list[FrameType] = []
        current: FrameType | None = frame
        while current is not None:
            chain.append(current)
            current = current.f_back
        for outer in chain[-_OUTER_FRAMES:]:
            local = outer.f_locals
            owner = local.get("self")
            for candidate in (local.get("loop"), owner, getattr(owner, "_loop", None)):
                if (
                    isinstance(candidate, asyncio.AbstractEventLoop)
                    and not isinstance(candidate, _BASE_LOOP)
                    and id(candidate) not in found
                    and candidate.is_running()
                ):
                    found[id(candidate)] = candidate
    return list(found.values())
