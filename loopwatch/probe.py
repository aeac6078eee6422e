"""Per-loop instrumentation: marks each loop iteration busy or idle.

Two kinds of probe share one small interface read by the watchdog:

* :class:`SelectorProbe` wraps the selector's ``select`` of an asyncio
  selector loop. The time between ``select`` returning and the next call is
  one iteration's busy time, measured in the loop thread itself, so durations
  are exact. Cost: two ``perf_counter()`` calls and a few attribute writes per
  iteration, nothing per callback.
* :class:`HeartbeatProbe` is for loops without a Python-level selector
  (uvloop): the watchdog pings the loop with ``call_soon_threadsafe`` and the
  lag until the pong runs is the busy time, to within one heartbeat.

Loops are discovered by :class:`Discovery`, which patches
``BaseEventLoop._run_once`` (so loops that are already running are found on
their next iteration) and ``uvloop.Loop.run_forever``. Every patch is undone
by :meth:`Discovery.remove`.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from loopwatch._log import log_once

#: iteration start, end (perf_counter) and the loop thread's CPU time at the end
Ended = tuple[float, float, float]

_ENDED_KEEP = 4096
_loop_numbers = itertools.count(1)


def _cpu_clock(thread_id: int) -> int | None:
    try:
        return time.pthread_getcpuclockid(thread_id)
    except (AttributeError, OSError):  # not on this platform, or the thread is gone
        return None


class Probe:
    """What the watchdog needs from a watched loop; subclasses fill in how."""

    resolution = "exact"

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        self.loop_ref = weakref.ref(loop)
        self.thread_id = thread_id
        self.label = (
            f"{type(loop).__name__}#{next(_loop_numbers)} "
            f"({_thread_name(thread_id)})"
        )
        #: perf_counter when the current iteration began; 0.0 while idle
        self.iter_start = 0.0
        #: iterations longer than this are reported to the watchdog
        self.slow_threshold = 0.05
        #: slow iterations that ended, for the watchdog to pick up
        self.ended: deque[Ended] = deque(maxlen=_ENDED_KEEP)
        self.iterations = 0
        self.busy = 0.0
        self.attached_at = time.perf_counter()
        self.detached_at: float | None = None
        self._clock = _cpu_clock(thread_id)
        # Watchdog-owned bookkeeping (only the watchdog thread touches these).
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

    def tick(self, now: float, interval: float) -> None:
        """Called by the watchdog on every wake-up."""

    def detach(self) -> None:
        if self.detached_at is None:
            self.detached_at = time.perf_counter()


def _thread_name(thread_id: int) -> str:
    thread = threading._active.get(thread_id)  # type: ignore[attr-defined]
    return thread.name if thread is not None else f"thread {thread_id:#x}"


class SelectorProbe(Probe):
    """Times iterations of an asyncio selector loop by wrapping ``select``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        super().__init__(loop, thread_id)
        self._selector = loop._selector  # type: ignore[attr-defined]
        self._wrapper = _make_select(self, self._selector.select)
        self._selector.select = self._wrapper
        # The probe is attached from inside an iteration (discovery runs at the
        # start of _run_once, or watch() is entered from a coroutine).
        self.iter_start = time.perf_counter()

    def detach(self) -> None:
        super().detach()
        if self._selector.__dict__.get("select") is self._wrapper:
            del self._selector.select
        self.iter_start = 0.0


def _make_select(probe: Probe, select: Callable[..., Any]) -> Callable[..., Any]:
    # The hot path: runs once per loop iteration. Locals bound as defaults
    # avoid global look-ups; the slow branch is taken only by long iterations.
    def watched_select(
        timeout: float | None = None,
        _probe: Probe = probe,
        _select: Callable[..., Any] = select,
        _perf: Callable[[], float] = time.perf_counter,
        _cpu: Callable[[], float] = time.thread_time,
    ) -> Any:
        start = _probe.iter_start
        if start:
            now = _perf()
            busy = now - start
            _probe.busy += busy
            _probe.iterations += 1
            if busy > _probe.slow_threshold:
                _probe.ended.append((start, now, _cpu()))
            _probe.iter_start = 0.0
        events = _select(timeout)
        _probe.iter_start = _perf()
        return events

    return watched_select


class HeartbeatProbe(Probe):
    """Measures lag of a loop that has no Python-level selector (uvloop)."""

    resolution = "heartbeat"

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        super().__init__(loop, thread_id)
        self._ping_sent = 0.0
        self._ping_cpu: float | None = None
        self._last_pong = time.perf_counter()

    def tick(self, now: float, interval: float) -> None:
        if self._ping_sent:
            # Unanswered: the loop has been busy at least since the ping.
            self.iter_start = self._ping_sent
            return
        if now - self._last_pong < interval * 0.5:
            return
        loop = self.loop_ref()
        if loop is None:
            return
        self._ping_sent = now
        self._ping_cpu = self.cpu_time()
        try:
            loop.call_soon_threadsafe(self._pong, now)
        except RuntimeError:  # closed between the check and the call
            self._ping_sent = 0.0
            self.detach()

    def _pong(self, sent: float) -> None:
        now = time.perf_counter()
        lag = now - sent
        self.iterations += 1
        if lag > self.slow_threshold:
            self.busy += lag
            self.ended.append((sent, now, time.thread_time()))
        self._last_pong = now
        self.iter_start = 0.0
        self._ping_sent = 0.0


def make_probe(loop: asyncio.AbstractEventLoop, thread_id: int) -> Probe:
    selector = getattr(loop, "_selector", None)
    if selector is not None and callable(getattr(selector, "select", None)):
        return SelectorProbe(loop, thread_id)
    return HeartbeatProbe(loop, thread_id)


class Discovery:
    """Finds every loop that runs while installed and hands it to ``on_loop``.

    ``on_loop`` is called in the loop's own thread, at the start of an iteration.
    """

    def __init__(self, on_loop: Callable[[asyncio.AbstractEventLoop], None]) -> None:
        self._on_loop = on_loop
        self._installed = False
        self._bypassed: weakref.WeakSet[Any] = weakref.WeakSet()
        self._original_run_once: Any = None
        self._uvloop_class: Any = None
        self._original_run_forever: Any = None

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        base = asyncio.base_events.BaseEventLoop
        original = base.__dict__["_run_once"]
        self._original_run_once = original
        discovery = self

        def _run_once(loop: Any) -> None:
            discovery._found(loop)
            # From now on this loop calls the original directly: no cost per iteration.
            loop._run_once = types.MethodType(original, loop)
            discovery._bypassed.add(loop)
            original(loop)

        _run_once.__loopwatch__ = True  # type: ignore[attr-defined]
        base._run_once = _run_once  # type: ignore[method-assign]
        self.patch_uvloop()

    def patch_uvloop(self) -> None:
        """Patch uvloop if it has been imported (may be called again later)."""
        if not self._installed or self._uvloop_class is not None:
            return
        uvloop = sys.modules.get("uvloop")
        cls = getattr(uvloop, "Loop", None)
        if cls is None or "run_forever" in cls.__dict__:
            return
        original = cls.run_forever
        discovery = self

        def run_forever(loop: Any) -> None:
            discovery._found(loop)
            original(loop)

        run_forever.__loopwatch__ = True  # type: ignore[attr-defined]
        cls.run_forever = run_forever
        self._uvloop_class = cls
        self._original_run_forever = original

    def _found(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._on_loop(loop)
        except Exception:
            log_once("discovery", "loopwatch could not attach to a loop; it is not watched")

    def remove(self) -> None:
        if not self._installed:
            return
        self._installed = False
        base = asyncio.base_events.BaseEventLoop
        if getattr(base.__dict__.get("_run_once"), "__loopwatch__", False):
            base._run_once = self._original_run_once  # type: ignore[method-assign]
        for loop in list(self._bypassed):
            bound = loop.__dict__.get("_run_once")
            if bound is not None and getattr(bound, "__func__", None) is self._original_run_once:
                del loop.__dict__["_run_once"]
        self._bypassed = weakref.WeakSet()
        cls = self._uvloop_class
        if cls is not None and getattr(cls.__dict__.get("run_forever"), "__loopwatch__", False):
            del cls.run_forever
        self._uvloop_class = None
