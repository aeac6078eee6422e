"""How the watchdog sleeps between looks, and when it is due to look next."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Callable


class Wakeup:
    """How the watchdog sleeps until its next look, or until it is woken: ``Event`` semantics.

    ``threading.Event.wait`` builds a condition and a fresh lock on every call;
    waking from it cost about 40 µs of CPU more than this one lock acquired with
    a timeout (on the project's VM, cold caches after the sleep), a third of
    what a quiet watchdog spent per look.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held while not set

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if woken by :meth:`set` (which this consumes)."""
        return self._lock.acquire(timeout=timeout)

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already set

    def clear(self) -> None:
        self._lock.acquire(blocking=False)


class Due:
    """When the watchdog's next look is due (loop clock): a loop thread that finds it
    long overdue lets go of the GIL for a moment (see ``probe._make_select``).

    Why: a thread that lets go of the GIL only for a moment, every few
    milliseconds (an asyncio loop calling ``select`` between short callbacks),
    takes it back before a waiting thread has woken, and each release restarts
    the waiter's 5 ms wait before it may ask for the GIL (CPython's "convoy
    effect"). The watchdog could then wait for seconds without looking.
    """

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf


#: the process's one watchdog's next look (inf while none is due)
DUE = Due()


#: A watchdog this late (seconds) is let in by the loop's thread ...
YIELD_AFTER = 0.002
#: ... which lets go of the GIL this long: long enough for it to wake and take it.
YIELD_FOR = 0.0001
#: taken before strict mode can wrap it (this sleep is loopwatch's, not the program's)
_SLEEP = time.sleep


class Door:
    """Lets an overdue watchdog in, from a loop's thread (see :class:`Due`)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        #: not to let go of the GIL for the watchdog again before this (loop clock)
        self._next = 0.0

    def let_in(self, now: float) -> None:
        """If the watchdog is long overdue, let go of the GIL for a moment; less and less
        often while it stays away (a watchdog the machine does not run is not helped)."""
        overdue = now - DUE.at
        if overdue > YIELD_AFTER and now > self._next:
            self._next = now + overdue
            _SLEEP(YIELD_FOR)


class DoorTimer:
    """A timer on the loop that opens its :class:`Door` now and then, whatever the loop runs.

    A loop timed on every iteration opens it from ``select``; one that is not
    has no code of loopwatch's running in its thread but this: every 0.1 s
    while its thread computes (when the watchdog may be kept away), every
    second otherwise (when it is not, but the loop may start computing).
    """

    BUSY_EVERY = 0.1
    IDLE_EVERY = 1.0

    def __init__(
        self, loop: asyncio.AbstractEventLoop, door: Door, on_error: Callable[[str], None]
    ) -> None:
        self._loop_ref = weakref.ref(loop)
        self._door = door
        self._on_error = on_error
        # Weakly: the loop holds its timers, and a timer holds its loop (a probe keeping
        # it would keep a loop the program dropped alive).
        self._handle: weakref.ref[asyncio.TimerHandle] | None = None
        self._stopped = False
        self._at = 0.0
        self._cpu = 0.0

    def start(self) -> None:
        """In the loop's thread: start, unless running (a loop run again keeps its timer)."""
        loop = self._loop_ref()
        if loop is None or self._pending() is not None or self._stopped:
            return
        self._at, self._cpu = time.monotonic(), time.thread_time()
        self._handle = weakref.ref(loop.call_later(self.BUSY_EVERY, self._fire))

    def _pending(self) -> asyncio.TimerHandle | None:
        return None if self._handle is None else self._handle()

    def stop(self) -> None:
        """From any thread: no more of it."""
        self._stopped = True
        handle, loop = self._pending(), self._loop_ref()
        if handle is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(handle.cancel)
        except RuntimeError:
            pass  # closed: its timers are gone with it

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop_ref()
        if self._stopped or loop is None:
            return
        try:
            now, cpu = time.monotonic(), time.thread_time()
            self._door.let_in(now)
            computing = cpu - self._cpu > (now - self._at) / 2
            self._at, self._cpu = now, cpu
            self._handle = weakref.ref(loop.call_later(
                self.BUSY_EVERY if computing else self.IDLE_EVERY, self._fire
            ))
        except Exception:
            self._on_error("the timer that lets the watchdog in")
