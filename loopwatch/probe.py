"""Per-loop instrumentation: tells the watchdog when the current iteration began.

A loop iteration is busy from the moment ``select`` returns until the next
``select`` call. Three kinds of probe find that out, cheapest first:

* :class:`SelectorProbe`, by default, costs nothing per iteration. asyncio's
  ``_run_once`` stores the iteration's start time in its local ``end_time``
  right after ``select`` returns; the watchdog reads it from the loop thread's
  frame when it looks (every ``threshold / 4``). Once an iteration has been
  busy for half the threshold, a one-shot wrapper is put on ``select`` that
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
import itertools
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from loopwatch._log import log_once

#: iteration start, end (time.monotonic, the loop's clock) and the loop thread's CPU time at the end
Ended = tuple[float, float, float]

_ENDED_KEEP = 4096
_loop_numbers = itertools.count(1)
_BASE_LOOP = asyncio.base_events.BaseEventLoop
_RUN_ONCE = _BASE_LOOP.__dict__["_run_once"]
_RUN_ONCE_CODE = _RUN_ONCE.__code__


def _cpu_clock(thread_id: int) -> int | None:
    try:
        return time.pthread_getcpuclockid(thread_id)
    except (AttributeError, OSError):  # not on this platform, or the thread is gone
        return None


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

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        self.loop_ref = weakref.ref(loop)
        self.thread_id = thread_id
        self.label = f"{type(loop).__name__}#{next(_loop_numbers)} ({_thread_name(thread_id)})"
        #: slow iterations that ended, for the watchdog to pick up (appended in the loop thread)
        self.ended: deque[Ended] = deque(maxlen=_ENDED_KEEP)
        #: iterations counted and busy seconds summed (exact mode only)
        self.iterations: int | None = None
        self.busy = 0.0
        self.attached_at = time.monotonic()
        self.detached_at: float | None = None
        self._clock = _cpu_clock(thread_id)
        # Watchdog-owned bookkeeping (only the watchdog touches it).
        self.wd: Any = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.loop_ref()

    def cpu_time(self) -> float | None:
        """CPU seconds used by the loop thread so far (readable from any thread)."""
        if self._clock is None:
            return None
        try:
            return time.clock_gettime(self._clock)
        except OSError:
            self._clock = None
            return None

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

    def run_ended(self) -> None:
        """The loop's run_forever returned: the iteration in progress (if any) is over."""

    def detach(self) -> None:
        if self.detached_at is None:
            self.detached_at = time.monotonic()


class SelectorProbe(Probe):
    """Times iterations of an asyncio selector loop (see the module docstring)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, thread_id: int, exact: bool = False
    ) -> None:
        super().__init__(loop, thread_id)
        self._selector: Any = loop._selector  # type: ignore[attr-defined]
        select = type(self._selector).select
        self._idle_code = getattr(select, "__code__", None)
        self._clock_resolution: float = getattr(loop, "_clock_resolution", 0.0)
        # Sampled mode needs the stock _run_once, whose frame holds the start time.
        self.exact = exact or not _stock_run_once(type(loop))
        #: exact mode: loop clock when the current iteration began; 0.0 while idle
        self.iter_start = 0.0
        self.slow_threshold = 0.05
        self._wrapper: Callable[..., Any] | None = None
        self._frame: FrameType | None = None
        self._frame_start = 0.0
        self._end_armed_for: FrameType | None = None
        if self.exact:
            self.iterations = 0
            self._wrapper = _make_select(self, self._selector.select)
            self._selector.select = self._wrapper
            # Attached from inside an iteration (discovery runs at its start).
            self.iter_start = time.monotonic()

    def busy_since(self, frame: FrameType | None, now: float, heartbeat: float) -> float:
        if self.exact:
            return self.iter_start
        if frame is None or frame.f_code is self._idle_code:
            self._frame = None
            return 0.0
        while frame is not None and frame.f_code is not _RUN_ONCE_CODE:
            frame = frame.f_back
        if frame is None:  # not inside an iteration: between runs, or in run_forever's set-up
            self._frame = None
            return 0.0
        if frame is self._frame:
            return self._frame_start
        # A new iteration. Its start is _run_once's local end_time, set right
        # after select returned; before that the loop is still selecting.
        end_time = frame.f_locals.get("end_time")
        if end_time is None:
            return 0.0
        self._frame = frame
        self._frame_start = end_time - self._clock_resolution
        return self._frame_start

    def watch_end(self, start: float) -> None:
        if self.exact or self._frame is None or self._end_armed_for is self._frame:
            return
        armed_for = self._end_armed_for = self._frame
        selector = self._selector
        select = selector.select
        probe = self

        def select_once(timeout: float | None = None) -> Any:
            if selector.__dict__.get("select") is select_once:
                del selector.select
            # Only the iteration we were armed for: if it ended before the hook
            # was in place, this is a later one and its end says nothing.
            if sys._getframe(1) is armed_for:
                probe.ended.append((start, time.monotonic(), time.thread_time()))
            if probe._end_armed_for is armed_for:
                probe._end_armed_for = None
            return select(timeout)

        selector.select = select_once

    def run_ended(self) -> None:
        now = time.monotonic()
        if self.exact and self.iter_start:
            self.ended.append((self.iter_start, now, time.thread_time()))
            self.iter_start = 0.0
        armed_for = self._end_armed_for
        if armed_for is not None:
            self._end_armed_for = None
            hook = self._selector.__dict__.get("select")
            if getattr(hook, "__name__", "") == "select_once":
                del self._selector.select
            if armed_for is self._frame:
                self.ended.append((self._frame_start, now, time.thread_time()))
        self._frame = None

    def detach(self) -> None:
        super().detach()
        current = self._selector.__dict__.get("select")
        if current is not None and (
            current is self._wrapper or getattr(current, "__name__", "") == "select_once"
        ):
            del self._selector.select
        self.iter_start = 0.0
        self._frame = None
        self._end_armed_for = None


def _make_select(probe: SelectorProbe, select: Callable[..., Any]) -> Callable[..., Any]:
    # Exact mode's hot path, once per loop iteration. Locals bound as defaults
    # avoid global look-ups; the slow branch is taken only by long iterations.
    def watched_select(
        timeout: float | None = None,
        _probe: SelectorProbe = probe,
        _select: Callable[..., Any] = select,
        _clock: Callable[[], float] = time.monotonic,
        _cpu: Callable[[], float] = time.thread_time,
    ) -> Any:
        start = _probe.iter_start
        if start:
            now = _clock()
            busy = now - start
            _probe.busy += busy
            _probe.iterations += 1  # type: ignore[operator]
            if busy > _probe.slow_threshold:
                _probe.ended.append((start, now, _cpu()))
            _probe.iter_start = 0.0
        events = _select(timeout)
        _probe.iter_start = _clock()
        return events

    return watched_select


class HeartbeatProbe(Probe):
    """Measures the lag of a loop that has no Python-level selector (uvloop)."""

    resolution = "heartbeat"

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        super().__init__(loop, thread_id)
        self.iterations = 0
        self.slow_threshold = 0.05
        self._ping_sent = 0.0
        self._generation = 0
        self._last_pong = time.monotonic()

    def busy_since(self, frame: FrameType | None, now: float, heartbeat: float) -> float:
        if self._ping_sent:
            # Unanswered: the loop has been busy at least since the ping.
            return self._ping_sent if now - self._ping_sent > heartbeat else 0.0
        if now - self._last_pong >= heartbeat * 0.5:
            loop = self.loop_ref()
            if loop is not None and loop.is_running():
                self._ping_sent = now
                try:
                    loop.call_soon_threadsafe(self._pong, now, self._generation)
                except RuntimeError:  # closed between the check and the call
                    self._ping_sent = 0.0
        return 0.0

    def _pong(self, sent: float, generation: int) -> None:
        if generation != self._generation:
            return  # sent before the loop stopped: its lag includes the pause
        now = time.monotonic()
        lag = now - sent
        self.iterations += 1  # type: ignore[operator]
        self.busy += lag
        if lag > self.slow_threshold:
            self.ended.append((sent, now, time.thread_time()))
        self._last_pong = now
        self._ping_sent = 0.0

    def run_ended(self) -> None:
        if self._ping_sent:
            now = time.monotonic()
            if now - self._ping_sent > self.slow_threshold:
                self.ended.append((self._ping_sent, now, time.thread_time()))
            self._ping_sent = 0.0
        self._generation += 1


def make_probe(loop: asyncio.AbstractEventLoop, thread_id: int) -> Probe:
    selector = getattr(loop, "_selector", None)
    if isinstance(loop, _BASE_LOOP) and callable(getattr(selector, "select", None)):
        return SelectorProbe(loop, thread_id)
    return HeartbeatProbe(loop, thread_id)


class Discovery:
    """Finds every loop that runs while installed and reports runs starting and ending.

    New runs are caught by patching ``run_forever`` (asyncio's and uvloop's):
    ``on_loop(loop)`` is called in the loop's thread when a run starts and
    ``on_run_end(loop)`` when it returns. Loops that were already running are
    found by :func:`running_loops`, which looks for ``run_forever`` frames.
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

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        self._patch_run_forever(_BASE_LOOP)
        self.patch_uvloop()

    def patch_uvloop(self) -> None:
        """Patch uvloop if it has been imported since (cheap to call repeatedly)."""
        uvloop = sys.modules.get("uvloop")
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
        self._patches.append((cls, "run_forever", cls.__dict__.get("run_forever")))
        cls.run_forever = run_forever  # type: ignore[attr-defined]

    def _found(self, loop: asyncio.AbstractEventLoop) -> None:
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
    found = []
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
