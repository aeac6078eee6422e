"""How the watchdog sleeps between looks, and when it is due to look next."""

from __future__ import annotations

import math
import threading


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
