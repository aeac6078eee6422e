"""The one watchdog thread per process, shared by every watched loop and session.

It wakes every ``0.8 * threshold``. A loop whose current iteration has been
busy for more than a tenth of the threshold is sampled (its thread's stack, via
``sys._current_frames``) every ``sample_interval`` until the iteration ends.
The probe measures the iteration's exact duration in the loop thread; the
watchdog joins that with the samples and the loop thread's CPU clock into a
:class:`~loopwatch.model.Block` and hands it to the subscribed sessions.

A C call that holds the GIL (``json.loads``, a catastrophic regex) keeps this
thread from running at all. :class:`Deadman` covers that: faulthandler's own
C thread is armed to dump every thread's stack if the watchdog has not re-armed
it in time, and the dump is parsed into the block.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from loopwatch import _precise, traces
from loopwatch._core.assemble import Cut as Cut  # re-exported: sessions and tests take it from here
from loopwatch._core.assemble import Reading
from loopwatch._core.deadman import Deadman
from loopwatch._core.dispatch import DISPATCHER
from loopwatch._core.findings import Found, Listener
from loopwatch._core.forking import FORK_WAIT
from loopwatch._core.gctimer import GcTimer
from loopwatch._core.looker import PING_EVERY, Looker
from loopwatch._core.looker import WALL_OFFSET as WALL_OFFSET  # re-exported: tests read it here
from loopwatch._core.registry import LoopRegistry
from loopwatch._core.settings import Settings, merge
from loopwatch._core.thread import WatchdogThread
from loopwatch._log import log_once
from loopwatch.config import Config
from loopwatch.model import LoopStats, Stall
from loopwatch.probe import (
    Discovery,
    Probe,
    SelectorProbe,
    loops_in_locals,
    running_loops,
)
from loopwatch.stacks import UserCode


class Subscriber(Protocol):
    """What the watchdog needs from a session."""

    config: Config
    started: float

    def receive_block(self, found: Found) -> None: ...

    def receive_loop(self, stats: LoopStats) -> None: ...

    def receive_event(self, message: str) -> None: ...

    def receive_cut(self, cut: Cut) -> None: ...

    def receive_stall(self, stall: Stall) -> None: ...

    def loop_run_ended(self) -> None:
        """A loop's run_forever returned (called in that loop's thread)."""


#: Seconds between looks for loops that were already running (new runs are patched).
_SCAN_EVERY = 1.0


#: How long one late wake-up (another thread held the GIL) keeps the closer pace.
_CONTENDED_FOR = 2.0

#: How long os.fork() waits for the watchdog to finish what it is doing; past that the
#: fork goes ahead and the child starts afresh.
_FORK_WAIT = FORK_WAIT


class Watchdog:
    """Process-wide: started by the first subscriber, stopped with the last."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscribers: list[Subscriber] = []
        self._loops = LoopRegistry()
        self._thread = WatchdogThread(self)
        #: until then the watchdog looks at the closer pace: it recently woke late
        self._contended_until = 0.0
        self._discovery = Discovery(self._on_loop, self._on_run_end)
        self._deadman = Deadman(self._broadcast_event)
        self._settings: Settings | None = None
        self.listeners: list[Listener] = []
        #: called in the watchdog thread after each look, outside the lock (replaced, not
        #: changed, so the thread reads it without the lock)
        self._wake_listeners: tuple[Callable[[], None], ...] = ()
        self._last_scan = 0.0
        self._gc = GcTimer()
        self._looker = Looker(self._gc, self._dispatch, self._dispatch_cut, self._dispatch_stall)
        #: whether the sessions were told that this OS does not say when a thread is not run
        self._told_no_counters = False
        #: whether the thread that is forking holds the lock, by thread id
        self._fork_held: dict[int, bool] = {}

    # -- subscription ---------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)
            self._apply_settings()
            self._discovery.install()
            self._gc.install()
            if self._thread.running:
                self._thread.poke()
            else:
                self._thread.start()

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def add_wake_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` in the watchdog thread after each look (at least every
        0.8 x threshold): how work asked for where no lock may be taken (a signal
        handler) gets done soon."""
        with self._lock:
            self._wake_listeners = (*self._wake_listeners, listener)

    def remove_wake_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._wake_listeners = tuple(w for w in self._wake_listeners if w != listener)

    def after_look(self) -> None:
        for listener in self._wake_listeners:
            try:
                listener()
            except Exception:
                log_once("wake-listener", "loopwatch failed after a look; it carries on")

    def held_back(self, began: float, ended: float) -> None:
        """The watchdog thread sat waiting for a CPU while it looked (see Looker.held_back)."""
        with self._lock:
            self._looker.held_back(began, ended)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._safe_flush()
            for probe in self._loops.probes:
                subscriber.receive_loop(self._looker.loop_stats(probe))
            self._subscribers.remove(subscriber)
            if self._subscribers:
                self._apply_settings()
                return
            ending = self._thread.stop()
        self._thread.join(ending)
        with self._lock:
            if self._subscribers:  # someone subscribed while we were joining
                return
            self._discovery.remove()
            self._gc.remove()
            _precise.remove(self._loops.probes)
            self._set_profiler(None)
            self._loops.drop_all()
            self._loops.forget_given_up()
            self._deadman.stop()
            self._deadman.refused = False
            self._settings = None

    def wait_ready(self, timeout: float = 1.0) -> None:
        """Wait (outside the lock) until the watchdog thread is looking at the loops.

        Until then it cannot see a block: a C call holding the GIL from the very
        start of the watch would keep it from ever starting to look, and end unseen.
        """
        self._thread.wait_ready(timeout)

    def active(self) -> bool:
        return bool(self._subscribers)

    @property
    def threshold(self) -> float | None:
        """The lowest threshold of the running sessions (None if none runs); any thread."""
        settings = self._settings
        return None if settings is None else settings.threshold

    def live_loops(self) -> list[LoopStats]:
        """Fresh statistics of the loops being watched (any thread may ask).

        Read without the watchdog's lock: a reader polling report() in a tight
        loop must not keep the watchdog from its work. The numbers are read field
        by field, so one may be a look newer than another; that is all.
        """
        return [self._looker.loop_stats(probe) for probe in list(self._loops.probes)]

    def attach_running_loops(self) -> None:
        """Watch, right away, the loop running in this thread and asyncio loops in other threads."""
        try:
            self._on_loop(asyncio.get_running_loop())
        except RuntimeError:
            pass
        self._scan(at_start=True)

    def _scan(self, at_start: bool = False) -> None:
        """Find loops that were running before the watch began (from their threads' stacks).

        At the start also loops other than asyncio's (uvloop) from the outer
        frames' locals; later runs of those are caught by the patches.
        """
        self._last_scan = time.monotonic()
        try:
            self._discovery.patch_uvloop()  # imported in a way the import hook missed
            frames = sys._current_frames()
            for thread_id, loop in running_loops(frames):
                self._on_loop(loop, thread_id)
            for loop in loops_in_locals(frames) if at_start else ():
                if self._loops.wants(loop):
                    self._discovery.attach_in_own_thread(loop)
            del frames
        except Exception:
            log_once("scan", "loopwatch could not look for running event loops")

    def flush(self) -> None:
        """Finish every block that has ended, now (used before reading a report)."""
        if not self._looker.finishing and not any(
            probe.ended or not probe.alive() for probe in list(self._loops.probes)
        ):
            # Nothing to finish: readers polling report() in a tight loop must not
            # keep the watchdog from its lock (it would miss samples, even blocks).
            # (A look finishing a block it took off the list is waited for: the
            # pytest plugin judges a test right after this.)
            return
        with self._lock:
            self._safe_flush()

    def _safe_flush(self) -> None:
        if self._settings is None:
            return
        try:
            self.look(time.monotonic(), flush=True)
        except Exception:
            log_once("flush", "loopwatch failed to finish pending blocks; some may be missing")

    def _apply_settings(self) -> None:
        settings = merge([s.config for s in self._subscribers])
        if self._settings is None or (settings.include, settings.exclude) != (
            self._settings.include,
            self._settings.exclude,
        ):
            self._looker.user_code = UserCode(settings.include, settings.exclude)
        self._settings = settings
        self._set_profiler(settings)
        for probe in self._loops.probes:
            self._configure(probe, settings)
        if settings.precise:
            _precise.install(self._loops.by_loop)
        else:
            _precise.remove(self._loops.probes)
        if not settings.deadman:
            self._deadman.stop()

    def _set_profiler(self, settings: Settings | None) -> None:
        """Start yappi when a session asks for profile mode, stop it when none does."""
        wanted = settings is not None and settings.profile
        if wanted and self._looker.profiler is None:
            from loopwatch.profiler import Profiler  # yappi only when asked for

            assert settings is not None
            self._looker.profiler = Profiler(
                duty=settings.profile_duty, keep_over=settings.threshold / 2
            )
            self._looker.profiler.start()
            if self._looker.profiler.problem:
                self._broadcast_event(self._looker.profiler.problem)
        elif not wanted and self._looker.profiler is not None:
            self._looker.profiler.stop()
            self._looker.profiler = None
            for probe in self._loops.probes:
                probe.profiler = None

    def _configure(self, probe: Probe, settings: Settings) -> None:
        # Below the block threshold, iterations still count towards per-site totals.
        probe.slow_threshold = settings.site_threshold
        running = self._looker.profiler is not None and self._looker.profiler.running
        probe.profiler = self._looker.profiler if running else None
        if (settings.precise or running) and isinstance(probe, SelectorProbe) and not probe.exact:
            probe.go_exact()  # both need to know where each iteration begins

    def _on_loop(self, loop: asyncio.AbstractEventLoop, thread_id: int | None = None) -> None:
        with self._lock:
            if self._settings is None:
                return
            if not self._loops.wants(loop):
                return
            if not self._thread.running and self._subscribers:
                self._thread.start()  # a forked child watching its first loop
            probe = self._loops.attach(loop, thread_id or threading.get_ident())
            self._configure(probe, self._settings)
            if isinstance(probe, SelectorProbe) and probe.want_exact and thread_id is None:
                # In the loop's own thread, before its first iteration: switch now,
                # or that iteration would go untimed.
                probe.exact_from_first_iteration()
            if thread_id is None:
                probe.start_in_loop()  # in the loop's own thread, as its run starts
            else:
                try:
                    loop.call_soon_threadsafe(probe.start_in_loop)
                except RuntimeError:
                    pass  # closed meanwhile: retired at the next look
            # A first CPU reading, so that a block in the very first iteration has one.
            probe.wd.last = Reading(time.monotonic(), probe.cpu_quick())
            self._note_no_run_queue(probe.wd.last)
            if self._settings.deadman:
                # Armed now, not at the next tick: the loop's first callback may
                # already be a C call that keeps the watchdog out.
                self._deadman.start()
                self._deadman.service(time.monotonic(), self._settings.deadman_timeout)

    def _on_run_end(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            probe = self._loops.get(loop)
            if probe is not None:
                probe.run_ended()
            for subscriber in list(self._subscribers):
                try:
                    subscriber.loop_run_ended()
                except Exception:
                    log_once("run-end-subscriber", "a loopwatch session failed at a loop's end")

    # -- fork -----------------------------------------------------------------

    def _before_fork(self) -> None:
        profiler = self._looker.profiler
        if profiler is not None:
            profiler.stop_for_fork()
        self._thread.stop_for_fork()
        # Holding the lock across the fork gives the child state that no thread was
        # half-way through changing (the thread that was would not exist there).
        held = self._lock.acquire(timeout=_FORK_WAIT)
        self._fork_held[threading.get_ident()] = held
        if held:
            # Blocks that have ended reach the sessions first, so that the child's
            # copies hold everything found up to the fork.
            self._safe_flush()
            try:
                self._deadman.disarm()
            except Exception:
                log_once("fork-deadman", "loopwatch could not disarm its deadman switch to fork")

    def _after_fork_in_parent(self) -> None:
        self._resume_profiler_after_fork()
        self._thread.resume_after_fork(wanted=bool(self._subscribers))
        if not self._fork_held.pop(threading.get_ident(), False):
            return
        try:
            settings = self._settings
            if settings is not None and settings.deadman and self._deadman.enabled:
                for fired_at, stacks in self._deadman.service(
                    time.monotonic(), settings.deadman_timeout
                ):
                    Looker.attach_dump(self._loops.probes, fired_at, stacks, settings)
        except Exception:
            log_once("fork-parent", "loopwatch could not re-arm its deadman switch after a fork")
        finally:
            self._lock.release()

    def _resume_profiler_after_fork(self) -> None:
        profiler = self._looker.profiler
        if profiler is not None:
            try:
                profiler.resume_after_fork()
            except Exception:
                log_once("fork-profiler", "loopwatch could not restart profile mode after a fork")

    def _after_fork_in_child(self) -> None:
        """Only the forking thread lives on: the child keeps its sessions, not the parent's loops.

        Sessions carry on in the child (each with its copy of what it had
        found); loops that were running at fork time never run again here and
        are not watched; the watchdog thread is started again when the child
        runs a loop. Locks, CPU clocks and files that belong to threads of the
        parent are dropped.
        """
        # A loop running at fork time (fork() called from a callback) is frozen
        # in this thread's stack: asyncio does not run it in the child.
        here = {threading.get_ident(): sys._getframe()}
        inherited = [loop for _, loop in running_loops(here)]
        del here
        held = self._fork_held.pop(threading.get_ident(), False)
        watching = self._thread.running or bool(self._subscribers) or bool(self._loops.probes)
        self._thread.forget_after_fork()
        self._resume_profiler_after_fork()
        if held:
            self._lock.release()
        else:
            self._lock = threading.RLock()  # its holder, if any, is gone
        self._loops.inherited_from_parent(inherited)
        if not watching:
            return  # not watching: nothing else to do
        try:
            self._loops.inherited_from_parent(
                [p.loop for p in self._loops.probes if p.loop is not None and p.loop.is_running()]
            )
            self._loops.drop_all()  # their CPU clocks' files are the parent threads'
            self._gc.pauses.clear()
            self._deadman.forget_after_fork(maybe_armed=not held)
        except Exception:
            log_once("fork-child", "loopwatch could not reset itself in a forked child")

    # -- the look -------------------------------------------------------------

    def look(
        self,
        now: float,
        late: float = 0.0,
        frames: dict[int, FrameType] | None = None,
        paused: tuple[float, float] = (0.0, 0.0),
        flush: bool = False,
    ) -> float:
        """Look at every loop (called by the thread with the lock held); the next interval.

        ``late``: how much later than asked the thread woke; ``frames``: every
        thread's frames, taken the moment it woke; ``paused``: how much of
        ``late`` the whole process did not run (surely, at most); ``flush``: only finish what
        has ended (a report is being read).
        """
        settings = self._settings
        if settings is None:
            return 0.05
        if frames is None:
            frames = sys._current_frames()
        # Stacks first, before anything here lets go of the GIL (a /proc read, a
        # lock): the loop's thread would run on, and a frame read later would show
        # a line after the call that was running when this thread woke.
        captured = {} if flush else self._looker.capture_busy(self._loops.probes, frames)
        # Not a GIL held by a loop thread: nothing of ours ran at all.
        self._looker.paused(*paused)
        late -= paused[0]
        if not flush and now - self._last_scan > _SCAN_EVERY:
            self._scan()
        if late > settings.threshold and not flush:
            for message in self._looker.stalled(self._loops.probes, late):
                self._broadcast_event(message)
        sampling = False
        cut_prone = False
        heartbeat = False
        for probe in list(self._loops.probes):
            if not flush and self._looker.idle_look(
                probe, frames.get(probe.thread_id), now, settings.threshold
            ):
                continue
            if probe.failure is not None:
                self._give_up(probe, probe.failure)
                continue
            try:
                if not probe.alive():
                    self._retire(probe, now)
                    continue
                heartbeat = heartbeat or probe.resolution == "heartbeat"
                frame = frames.get(probe.thread_id)
                if self._looker.track(
                    probe, frame, now, settings, flush, late, captured.get(probe.thread_id)
                ):
                    sampling = True
                # so that few of a thousand cuts go uncounted
                cut_prone = cut_prone or probe.wd.watching_cuts(now)
                if not flush and (
                    probe.resolution == "heartbeat" or now - probe.wd.pinged >= PING_EVERY
                ):
                    # Lag pings are few: each wakes the loop, and sending one lets go of the GIL.
                    probe.wd.pinged = now
                    probe.ping(now)
            except Exception:
                self._give_up(probe, "the watchdog")
        del frames
        if settings.deadman and self._loops.probes and not flush:
            self._deadman.start()
            for fired_at, stacks in self._deadman.service(now, settings.deadman_timeout):
                Looker.attach_dump(self._loops.probes, fired_at, stacks, settings)
        if sampling:
            return settings.sample_interval
        if cut_prone:
            # Looking often enough to catch most cuts, not at the block sampler's
            # pace: every wake-up costs the busy loop a round trip of the GIL.
            return max(settings.sample_interval, settings.site_threshold / 2)
        if heartbeat:
            return settings.heartbeat
        if late >= sys.getswitchinterval() and not flush:
            # waited a whole switch interval: another thread held the GIL
            self._contended_until = now + _CONTENDED_FOR
        # A watchdog that has to wait for the GIL may wake too late to see a block:
        # while it does, it looks at the closer pace (a quiet process pays nothing).
        return settings.tick if now >= self._contended_until else settings.contended_tick

    def _dispatch_cut(self, cut: Cut, end: float) -> None:
        for subscriber in list(self._subscribers):
            config = subscriber.config
            if cut.duration > config.effective_site_threshold and end > subscriber.started:
                try:
                    subscriber.receive_cut(cut)
                except Exception:
                    log_once("sink-cut", "a loopwatch session failed to record a slow iteration")

    def _dispatch_stall(self, stall: Stall, end: float) -> None:
        for subscriber in list(self._subscribers):
            if stall.duration > subscriber.config.threshold and end > subscriber.started:
                try:
                    subscriber.receive_stall(stall)
                except Exception:
                    log_once("sink-stall", "a loopwatch session failed to record a stall")

    def _note_no_run_queue(self, reading: Reading) -> None:
        """Say once, where the OS keeps no run-queue time, that stalls are told apart less well."""
        if self._told_no_counters or reading.cpu is None or reading.cpu[1] is not None:
            return
        self._told_no_counters = True
        self._broadcast_event(
            "this OS does not say how long a thread waited for a CPU: a loop the machine "
            "did not run (a busy machine) may be reported as a block"
        )

    def _dispatch(self, found: Found) -> None:
        if found.span is not None:
            # Exporters may send a span as it ends: not in the watchdog's thread.
            DISPATCHER.submit(self, "OpenTelemetry trace", traces.record, found.span, found.block)
        duration = found.block.duration
        for subscriber in list(self._subscribers):
            if duration > subscriber.config.threshold and found.end > subscriber.started:
                try:
                    subscriber.receive_block(found)
                except Exception:
                    log_once("sink", "a loopwatch session failed to record a block")
        for listener in list(self.listeners):
            try:
                listener(found)
            except Exception:
                log_once(f"listener-{id(listener)}", "a loopwatch block listener failed")

    def _give_up(self, probe: Probe, where: str) -> None:
        """An internal error while watching one loop: stop watching that loop, only.

        The program and its other loops carry on; the error is logged once per
        kind (a test suite makes thousands of loops), and each session's report
        says which loop is no longer watched.
        """
        # A failure in the loop's thread was logged there, with its traceback.
        if probe.failure is None:
            probe.log_failure(where)
        self._loops.give_up(probe)
        try:
            probe.detach()
        except Exception:
            log_once("give-up-detach", "loopwatch could not remove its hooks from a loop")
        self._broadcast_event(
            f"stopped watching {probe.label}: internal error in {where} "
            "(logged on the 'loopwatch' logger); its blocks after that are not reported"
        )

    def _retire(self, probe: Probe, now: float) -> None:
        settings = self._settings
        if settings is not None:
            self._looker.track(probe, None, now, settings, flush=True)
        probe.detach()
        self._loops.retire(probe)
        stats = self._looker.loop_stats(probe)
        for subscriber in self._subscribers:
            subscriber.receive_loop(stats)

    def _broadcast_event(self, message: str) -> None:
        for subscriber in list(self._subscribers):
            subscriber.receive_event(message)

    def broadcast_event(self, message: str) -> None:
        """Record a notable event in every active session's report."""
        with self._lock:
            self._broadcast_event(message)


WATCHDOG = Watchdog()

if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=WATCHDOG._before_fork,
        after_in_parent=WATCHDOG._after_fork_in_parent,
        after_in_child=WATCHDOG._after_fork_in_child,
    )


def add_block_listener(listener: Listener) -> None:
    """Call ``listener(found)`` (from the watchdog thread) for every block found."""
    with WATCHDOG._lock:
        if listener not in WATCHDOG.listeners:
            WATCHDOG.listeners.append(listener)


def remove_block_listener(listener: Listener) -> None:
    with WATCHDOG._lock:
        if listener in WATCHDOG.listeners:
            WATCHDOG.listeners.remove(listener)
