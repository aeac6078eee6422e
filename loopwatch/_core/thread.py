"""The watchdog's thread: sleep, wake, take every thread's frames first, look, repeat.

:class:`WatchdogThread` owns the thread's life (start, stop, stop for a fork
and start again after it) and the timing of each wake-up: how late it woke
(another thread held the GIL, unless the machine kept it waiting) and the
frames taken the moment it woke. What a look does is its owner's business
(:class:`~loopwatch.watchdog.Watchdog`), under the owner's lock.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from types import FrameType
from typing import Protocol

from loopwatch._core.assemble import queued_between
from loopwatch._core.forking import FORK_WAIT, join_for_fork
from loopwatch._core.wakeup import DUE, Wakeup
from loopwatch._log import log_once
from loopwatch.probe import ThreadClock

#: A wake-up later than this waited for the GIL (the switch interval is 5 ms; a
#: thread that releases the GIL lets the watchdog in at once).
LATE = 0.001

#: Frames taken on waking are used if the owner's lock was had within this many seconds.
_FRESH = 0.002


class Owner(Protocol):
    """What the thread drives."""

    @property
    def lock(self) -> threading.RLock: ...

    def look(
        self,
        now: float,
        late: float,
        frames: dict[int, FrameType] | None,
        paused: tuple[float, float],
    ) -> float:
        """Look at the loops (the lock is held); seconds until the next look.

        ``late``: how much later than asked the thread woke, less the time it sat
        waiting for a CPU; ``paused``: how much of that the whole process did not
        run at all (stopped, frozen), as far as the thread can tell: (surely, at most).
        """

    def after_look(self) -> None:
        """What is to be done after each look, outside the lock."""

    def held_back(self, began: float, ended: float) -> None:
        """This thread sat waiting for a CPU in its look, from ``began`` to ``ended``."""


class WatchdogThread:
    """The one ``loopwatch-watchdog`` thread of the process."""

    def __init__(self, owner: Owner) -> None:
        self._owner = owner
        #: the running thread; any other thread still in _run() (told to stop, not yet
        #: seen it) ends at its next look
        self._thread: threading.Thread | None = None
        #: set once the thread has taken its first look
        self._ready = threading.Event()
        self._wake = Wakeup()
        #: threads told to end for a fork that had not ended when it went ahead
        self._ending: list[threading.Thread] = []
        #: whether the thread was stopped for a fork and is to be started again after it
        self._resume_after_fork = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (the caller holds the owner's lock)."""
        self._wake.clear()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopwatch-watchdog", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Look now rather than at the end of the current sleep."""
        self._wake.set()

    def stop(self) -> list[threading.Thread]:
        """Tell the thread to end (under the owner's lock); join what it returns outside it."""
        thread, self._thread = self._thread, None
        ending = [t for t in (thread, *self._ending) if t is not None]
        self._ending = []
        self._wake.set()
        return ending

    @staticmethod
    def join(threads: list[threading.Thread]) -> None:
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

    def wait_ready(self, timeout: float) -> None:
        self._ready.wait(timeout)

    # -- fork ---------------------------------------------------------------------------

    def stop_for_fork(self) -> None:
        """End the thread before a fork (see :mod:`loopwatch._core.forking`).

        Its state lives in the owner, so the thread started again after the
        fork carries on watching, a block in progress included.
        """
        thread = self._thread
        if thread is threading.current_thread():
            self._resume_after_fork = False
            return
        self._thread = None
        self._wake.set()
        self._resume_after_fork = join_for_fork(thread, FORK_WAIT)
        if thread is not None and thread.is_alive():
            self._ending.append(thread)  # stop() hands it on to be joined

    def resume_after_fork(self, wanted: bool) -> None:
        """In the parent: start again if the fork stopped the thread and it is still ``wanted``."""
        resume, self._resume_after_fork = self._resume_after_fork, False
        if resume and wanted and self._thread is None:
            self.start()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's threads do not exist here."""
        self._resume_after_fork = False
        self._ending = []
        self._thread = None
        # The gone thread may have been inside wait().
        self._wake = Wakeup()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        # The thread's own run-queue time: waking late because every CPU was
        # taken is not waking late because a loop thread held the GIL.
        own = ThreadClock(threading.get_ident(), threading.get_native_id())
        try:
            self._loop_forever(own)
        finally:
            DUE.at = math.inf
            own.close()

    def _loop_forever(self, own: ThreadClock) -> None:
        owner = self._owner
        late = 0.0
        paused = (0.0, 0.0)
        frames: dict[int, FrameType] | None = None
        woke = time.monotonic()
        # Where this thread's cycle (look, then sleep) began: its run-queue time and
        # the process's CPU time then tell what the machine did meanwhile.
        clock = own.quick()
        process_cpu = time.process_time()
        while True:
            with owner.lock:
                if self._thread is not threading.current_thread():
                    return  # stopped: the last session ended, or the program forks
                now = time.monotonic()
                if now - woke > _FRESH:
                    frames = None  # the lock was busy: look again
                try:
                    interval = owner.look(now, late, frames, paused)
                except Exception:
                    log_once("watchdog", "loopwatch's watchdog failed; detection may be incomplete")
                    interval = 0.05
                frames = None  # not kept while asleep: frames hold the program's locals
            owner.after_look()
            if not self._ready.is_set():
                self._ready.set()
            cycle_began = woke
            asleep = time.monotonic()
            # Made to wait for a CPU while it looked (holding the GIL, mostly), this
            # thread kept the loops' threads waiting for the GIL meanwhile.
            held = queued_between(clock, own.quick())
            if held > LATE:
                owner.held_back(asleep - held, asleep)
            # Kept through the look that follows: sending a ping lets go of the GIL, and
            # taking it back is the same wait for the GIL as waking is.
            DUE.at = asleep + interval
            woken = self._wake.wait(interval)
            # First thing on waking: where each thread is. After a C call that held
            # the GIL, that is the line it returned to; anything here that let the
            # GIL go first (a contended lock, I/O) would let the loop run on past it.
            frames = None if woken else sys._current_frames()
            woke = time.monotonic()
            self._wake.clear()
            # The thread's own run-queue time over the cycle tells how much of a late
            # wake was the machine's doing, not a GIL held by a loop thread; the
            # process's CPU time tells a process that was stopped (about 3 us a
            # cycle, so on every one: a stop can come at any moment of it).
            before, clock = clock, own.quick()
            cpu_before, process_cpu = process_cpu, time.process_time()
            # Waking late means another thread held the GIL (or the machine is
            # overloaded): that is how a block is known to hold the GIL.
            late = 0.0 if woken else max(
                0.0, woke - asleep - interval - queued_between(before, clock))
            # Held up by another thread holding the GIL, that thread ran meanwhile.
            # Time of the cycle (the look included: a stop may come while it runs)
            # in which no thread of ours ran at all is time the process was stopped
            # or frozen (SIGSTOP, a cgroup freezer, a paused VM); a C call that waits
            # without letting go of the GIL looks the same from here.
            cycle = woke - cycle_began
            overdue = max(0.0, cycle - interval)
            queued = queued_between(before, clock)
            # A stopped thread waits for a CPU only to take the stop and to go on after
            # it: if that is most of the delay, this thread may have been starved
            # instead, while the program slept (at most / surely paused).
            slow = overdue - queued if queued > overdue / 2 else overdue
            idle = cycle - (process_cpu - cpu_before)
            surely = min(slow, idle) if slow > LATE and idle > LATE else 0.0
            at_most = min(overdue, idle) if overdue > LATE and idle > LATE else 0.0
            paused = (surely, at_most)
