"""watch() and run(): wire a Config to the probe and watchdog, and collect a Report."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from loopwatch._children import Children, announce, became_child, with_children, withdraw
from loopwatch._core.dispatch import DISPATCHER
from loopwatch._core.dispatch import MAX_PENDING as DISPATCHER_LIMIT
from loopwatch._core.findings import Found, Listener
from loopwatch._core.ondemand import ReportOnSignal
from loopwatch._core.strict import STRICT
from loopwatch._log import block_logger, forget_owner
from loopwatch.config import Config
from loopwatch.errors import LoopBlockedError
from loopwatch.model import (
    Block,
    BlockingCall,
    FunctionStat,
    LoopStats,
    Report,
    SiteTable,
    Stall,
)
from loopwatch.watchdog import WATCHDOG, Cut

#: The site of slow iterations that no stack sample caught.
UNSAMPLED = "<not sampled>"

if TYPE_CHECKING:
    from loopwatch.sinks import Sink

T = TypeVar("T")

#: Loop statistics kept per session (the first ones seen; later loops' blocks still count).
_MAX_LOOPS = 256
#: Every session not yet garbage: their locks are replaced in a forked child.
_SESSIONS: weakref.WeakSet[Session] = weakref.WeakSet()

#: Distinct events kept per session (each may name a loop: a suite makes thousands).
_MAX_EVENTS = 100


class Session:
    """One watch: from ``start()`` (or entering ``with``) to ``stop()``.

    Use :func:`watch` to make one.
    """

    def __init__(
        self,
        config: Config,
        *,
        listener: Listener | None = None,
        log_blocks: bool = True,
        call_listener: Callable[[BlockingCall], None] | None = None,
    ) -> None:
        self.config = config
        # Everything that hears of this session's blocks, in order. An internal
        # listener (the pytest plugin's quick append) is called before the watchdog
        # moves on; logging, on_block and sinks may be slow, so they run in the
        # sinks thread. The plugin reports blocks itself (log_blocks=False): a log
        # record would land in whichever test phase runs when the sinks thread
        # gets to it.
        self._log_blocks = log_blocks
        self._listeners: list[Listener] = [] if listener is None else [listener]
        if log_blocks or config.on_block is not None:
            self._listeners.append(self._announce_later)
        self._listeners += [self._to_sink(sink) for sink in config.sinks]
        self.started = 0.0
        self.stopped: float | None = None
        self._lock = threading.Lock()
        _SESSIONS.add(self)
        self._blocks: deque[Block] = deque(maxlen=config.max_blocks)
        self._sites = SiteTable()
        self._loops: dict[str, LoopStats] = {}
        self._events: dict[str, None] = {}  # insertion-ordered, and O(1) to look up
        self._events_dropped = 0
        self._dropped = 0
        self._calls: deque[BlockingCall] = deque(maxlen=config.max_blocks)
        self._stalls: deque[Stall] = deque(maxlen=config.max_blocks)
        self._calls_dropped = 0
        #: strict mode: hears of each blocking call, in the thread that made it
        self._call_listener = call_listener
        self._running = False
        self._log_handler: logging.Handler | None = None
        #: with subprocesses=True: what the worker processes wrote, and the variable
        #: that told them where (restored when this session stops)
        self._children: Children | None = None
        self._children_env: tuple[str | None] | None = None
        #: in a watched worker process: called when one of its loops stops running
        self._on_run_end: Callable[[], None] | None = None
        #: report_signal: the signal that writes the report, while it is installed
        self._on_signal: ReportOnSignal | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Session:
        """Start watching every event loop in this process."""
        if self._running:
            raise RuntimeError("this loopwatch session is already running")
        if self.stopped is not None:
            raise RuntimeError("a loopwatch session cannot be restarted; call watch() again")
        self.started = time.monotonic()
        self._running = True
        if self.config.mode == "log" and not logging.getLogger().handlers:
            # Nothing configured logging: show the block warnings on stderr ourselves.
            self._log_handler = logging.StreamHandler()
            self._log_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            block_logger.addHandler(self._log_handler)
        if self.config.subprocesses:
            self._announce_to_children()
        DISPATCHER.acquire()
        for sink in self.config.sinks:
            self._deliver(f"sink {type(sink).__name__}.open", sink.open, self)
        WATCHDOG.subscribe(self)
        if self.config.strict:
            STRICT.subscribe(self.receive_call)
        if self.config.report_signal is not None:
            self._take_signal(self.config.report_signal)
        WATCHDOG.attach_running_loops()
        WATCHDOG.wait_ready()
        return self

    def stop(self) -> None:
        """Stop watching; everything that was patched is restored when no session is left."""
        if not self._running:
            return
        self._running = False
        if self.config.strict:
            STRICT.unsubscribe(self.receive_call)
        if self._on_signal is not None:
            WATCHDOG.remove_wake_listener(self._on_signal.after_look)
            self._on_signal.remove()
            self._on_signal = None
        if self._children_env is not None:
            withdraw(self._children_env[0])
            self._children_env = None
        try:
            WATCHDOG.unsubscribe(self)
        finally:
            self.stopped = time.monotonic()
            for sink in self.config.sinks:
                self._deliver(f"sink {type(sink).__name__}.close", sink.close)
                DISPATCHER.forget(sink)
            # Leaving watch() means its callbacks have run (a hung one is waited for
            # only so long: the program must not hang on loopwatch's account).
            DISPATCHER.release(wait=DISPATCHER.drain(self))
            forget_owner(self)  # a later session may get this one's id
            if self._log_handler is not None:
                block_logger.removeHandler(self._log_handler)
                self._log_handler = None

    @property
    def running(self) -> bool:
        return self._running

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            self._raise_if_blocked()

    async def __aenter__(self) -> Session:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _raise_if_blocked(self) -> None:
        if self.config.mode == "raise" and (self._blocks or self._dropped):
            raise LoopBlockedError(self.report())

    # -- results --------------------------------------------------------------

    @property
    def blocks(self) -> list[Block]:
        """The blocks found so far (the latest ``max_blocks``)."""
        if self._running:
            WATCHDOG.flush()
        with self._lock:
            return list(self._blocks)

    def live_loops(self) -> tuple[LoopStats, ...]:
        """Statistics of every loop seen, running ones with fresh numbers; any thread may call."""
        live = WATCHDOG.live_loops() if self._running else []
        with self._lock:
            loops = dict(self._loops)
        for stats in live:
            if stats.loop in loops or len(loops) < _MAX_LOOPS:
                loops[stats.loop] = stats
        return tuple(loops.values())

    def running_loops(self) -> tuple[LoopStats, ...]:
        """Fresh statistics of the loops running now (finished ones left out); any thread."""
        return tuple(WATCHDOG.live_loops()) if self._running else ()

    def report(self) -> Report:
        """A snapshot of everything found so far; safe to call from any thread while watching."""
        if self._running:
            WATCHDOG.flush()
        loops = self.live_loops()
        with self._lock:
            sites = self._sites.freeze()
            functions: tuple[FunctionStat, ...] = ()
            if self.config.profile:
                from loopwatch.profiler import Profiler

                functions = Profiler.aggregate(self._blocks)
            report = Report(
                threshold=self.config.threshold,
                functions=functions,
                blocks=tuple(self._blocks),
                sites=tuple(sites),
                loops=loops,
                dropped_blocks=self._dropped,
                calls=tuple(self._calls),
                dropped_calls=self._calls_dropped,
                stalls=tuple(self._stalls),
                events=tuple(self._events) + (
                    (f"{self._events_dropped} more distinct events were not kept",)
                    if self._events_dropped
                    else ()
                ),
            )
        if self._children is not None:
            report = with_children(report, self._children.read(), self.config.max_blocks)
        return report

    def _take_signal(self, signame: str) -> None:
        on_signal = ReportOnSignal(signame, self.config.report_file, self.report)
        if on_signal.install():
            self._on_signal = on_signal
            WATCHDOG.add_wake_listener(on_signal.after_look)
        else:
            self.receive_event(
                f"report_signal {signame} is not set: watch() started outside the main thread"
            )

    # -- worker processes -------------------------------------------------------

    def _announce_to_children(self) -> None:
        announced = announce(self.config)
        if announced is None:
            return  # this process is itself a watched child: its children write there too
        folder, previous = announced
        self._children = Children(folder)
        self._children_env = (previous,)
        # The folder outlives stop(): the report is read after. It goes with the session.
        weakref.finalize(self, self._children.remove)

    def forget_findings(self, listener: Listener) -> None:
        """In a forked child: what was found belongs to the parent; ``listener`` hears the rest.

        Sinks, callbacks and the children's folder stay the parent's.
        """
        with self._lock:
            self._blocks.clear()
            self._stalls.clear()
            self._sites = SiteTable()
            self._loops.clear()
            self._events.clear()
            self._events_dropped = self._dropped = 0
        self._listeners = [listener]
        self._children = None
        self._on_run_end = None
        self._children_env = None

    # -- called by the watchdog -----------------------------------------------

    def receive_block(self, found: Found) -> None:
        block = found.block
        with self._lock:
            if len(self._blocks) == self._blocks.maxlen:
                self._dropped += 1
            self._blocks.append(block)
            self._sites.add_block(block)
        for listener in self._listeners:
            listener(found)

    def _announce_later(self, found: Found) -> None:
        self._deliver("on_block callback", self._announce, found.block)

    def _announce(self, block: Block) -> None:
        if self._log_blocks:
            block_logger.warning(
                "event loop blocked for %.0f ms (%s) at %s in %s%s%s",
                block.duration * 1000,
                block.kind,
                block.site or "an unknown line",
                block.function or "?",
                f", request {block.request}" if block.request else "",
                f", task {block.task}" if block.task else "",
            )
        if self.config.on_block is not None:
            self.config.on_block(block)

    def _to_sink(self, sink: Sink) -> Listener:
        name = type(sink).__name__

        def to_sink(found: Found) -> None:
            block = found.block
            if not DISPATCHER.first_time(sink, block):
                return  # a sink shared by nested sessions hears of a block once
            self._deliver(f"sink {name}.block", sink.block, block)
            self._deliver(
                f"sink {name}.slow_iteration",
                sink.slow_iteration, block.loop, block.duration, block.site, True,
            )

        return to_sink

    def _deliver(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        if not DISPATCHER.submit(self, what, call, *args):
            self.receive_event(
                "callbacks and sinks fell behind: some deliveries were dropped "
                f"(more than {DISPATCHER_LIMIT} waiting)"
            )

    def receive_cut(self, cut: Cut) -> None:
        """An iteration over the site threshold but under the block threshold."""
        with self._lock:
            self._sites.add(cut.site or UNSAMPLED, cut.function, cut.duration, cut.cpu_ratio,
                            None, cut.gc_time, block=False)
        for sink in self.config.sinks:
            if not DISPATCHER.first_time(sink, cut):
                continue
            self._deliver(
                f"sink {type(sink).__name__}.slow_iteration",
                sink.slow_iteration, cut.loop, cut.duration, cut.site, False,
            )

    def receive_stall(self, stall: Stall) -> None:
        """A long iteration the machine caused (the loop's thread was not run): not a block."""
        with self._lock:
            self._stalls.append(stall)
        for sink in self.config.sinks:
            # (a sink object that is not a Sink subclass may lack the method)
            stalled = getattr(sink, "stall", None)
            if stalled is not None and DISPATCHER.first_time(sink, stall):
                self._deliver(f"sink {type(sink).__name__}.stall", stalled, stall)

    def receive_loop(self, stats: LoopStats) -> None:
        with self._lock:
            if stats.loop in self._loops or len(self._loops) < _MAX_LOOPS:
                self._loops[stats.loop] = stats

    def receive_call(self, call: BlockingCall) -> None:
        """Strict mode: a blocking call on a loop's thread (called in that thread)."""
        with self._lock:
            if len(self._calls) == self._calls.maxlen:
                self._calls_dropped += 1
            self._calls.append(call)
        if self._call_listener is not None:
            self._call_listener(call)

    def loop_run_ended(self) -> None:
        if self._on_run_end is not None:
            self._on_run_end()

    def receive_event(self, message: str) -> None:
        with self._lock:
            if message in self._events:
                return
            if len(self._events) < _MAX_EVENTS:
                self._events[message] = None
            else:
                self._events_dropped += 1


def _reset_locks_after_fork() -> None:
    # A thread of the parent reading a report at fork time held a session's lock;
    # that thread does not exist in the child, so the lock would never be released.
    # Readers only read, and the watchdog held its own lock across the fork, so the
    # data are whole.
    for session in list(_SESSIONS):
        session._lock = threading.Lock()
        if session.running and session.config.subprocesses:
            became_child(session)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reset_locks_after_fork)


def watch(
    threshold: float | None = None,
    *,
    on_block: Callable[[Block], Any] | None = None,
    sinks: Sequence[Sink] | None = None,
    config: Config | None = None,
    **options: Any,
) -> Session:
    """Watch every asyncio event loop in this process for blocking calls.

    Works as ``with`` and ``async with``; loops started inside the block
    (``asyncio.run``, loops in other threads) are watched too. Options are the
    :class:`~loopwatch.Config` fields; unset ones come from ``LOOPWATCH_*``
    environment variables, then the defaults.

    >>> import asyncio, time, loopwatch
    >>> async def main():
    ...     time.sleep(0.2)          # blocks the loop
    >>> with loopwatch.watch(threshold=0.1) as session:
    ...     asyncio.run(main())
    >>> [round(b.duration, 1) for b in session.report().blocks]
    [0.2]
    """
    explicit = dict(options, threshold=threshold, on_block=on_block, sinks=sinks)
    if config is None:
        config = Config.resolve(**explicit)
    elif any(v is not None for v in explicit.values()):
        config = config.with_changes(**{k: v for k, v in explicit.items() if v is not None})
    return Session(config)


def run(
    main: Coroutine[Any, Any, T] | Callable[[], Awaitable[T]],
    *,
    file: Any = None,
    **options: Any,
) -> T:
    """``asyncio.run(main)`` while watching, then print the report to stderr.

    >>> import asyncio, loopwatch
    >>> async def main():
    ...     await asyncio.sleep(0)
    ...     return 42
    >>> loopwatch.run(main(), threshold=0.05, file=open("/dev/null", "w"))
    42
    """
    from loopwatch.console import print_report

    coro = main() if callable(main) else main
    session = watch(**options)
    try:
        with session:
            return asyncio.run(coro)  # type: ignore[arg-type]
    finally:
        print_report(session.report(), file=file if file is not None else sys.stderr)
