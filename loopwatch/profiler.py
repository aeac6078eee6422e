"""Profile mode: yappi, wall clock, builtins on, calls tagged by loop iteration.

yappi sees every call, C functions included, which sampling cannot: a block
spent inside ``json.loads`` shows up as ``JSONDecoder.raw_decode``, and a block
in ``re`` as ``re.Pattern.match``. Each call is tagged with the loop iteration
it began in, so the watchdog can ask which functions ran in a block.

How the tags are kept cheap (measured with yappi 1.7.6):

- yappi keeps a table per tag, and its per-call cost grows with the number of
  live tags (256 tags: +5%; 2000: 5x). So a loop thread keeps its tag for
  ``span`` seconds (5 ms) across short iterations, and takes a new one only
  when that time is up; a long iteration therefore always ends its tag, and
  shares it only with the short iterations of the ``span`` before it.
- Every ``max_tags`` new tags, yappi's results are cleared. The functions of
  recent iterations longer than ``keep_over`` are copied out first, so the
  watchdog can still ask for them after the clear.
- ``duty < 1`` profiles only the first ``duty * window`` seconds of every
  ``window`` (a small ``loopwatch-profiler`` thread switches yappi on and
  off): yappi's cost is paid only then, and blocks outside it get no
  functions. While yappi is off, ``begin_iteration`` costs one attribute read.

>>> import json, threading
>>> profiler = Profiler()
>>> profiler.start()
>>> tag = profiler.begin_iteration()
>>> _ = json.loads("[" + ",".join(["1"] * 100000) + "]")
>>> _ = profiler.begin_iteration()
>>> "loads" in [f.name for f in profiler.functions(tag)]
True
>>> profiler.stop()
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from time import perf_counter
from typing import Any

import yappi  # type: ignore[import-untyped]

from loopwatch._core.forking import join_for_fork
from loopwatch._log import log_once
from loopwatch.model import Block, FunctionStat

_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: yappi's names for C methods, e.g. "<method 'match' of 're.Pattern' objects>".
_C_METHOD = re.compile(r"^<method '([^']+)' of '([^']+)' objects>$")
_BUILTIN_METHOD = re.compile(r"^<built-in method ([^ ]+) of ")

#: Trampolines whose own time yappi gets wrong: a task step runs inside
#: Context.run, and until the task's coroutine finishes yappi counts the step's
#: whole time as Context.run's own (the coroutine shows 0), which would put it
#: above the function that really took the time.
_TRAMPOLINES = frozenset({"_contextvars.Context.run"})

_lock = threading.Lock()
_owner: Profiler | None = None


class Profiler:
    """yappi in wall-clock mode, builtins on, each call tagged with the loop iteration it began in.

    One runs at a time in a process (yappi is process-wide). ``start()``
    refuses, and says why in :attr:`problem`, when yappi is already in use.

    >>> profiler = Profiler(duty=0.25, window=2.0)   # profile 0.5 s of every 2 s
    >>> profiler.start()
    >>> tag = profiler.begin_iteration()             # in the loop thread, every iteration
    >>> stats = profiler.functions(tag)              # in the watchdog, for a block
    >>> profiler.stop()
    """

    def __init__(
        self,
        *,
        duty: float = 1.0,
        window: float = 1.0,
        span: float = 0.005,
        keep_over: float = 0.01,
        max_tags: int = 256,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], not {duty!r}")
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, not {window!r}")
        self.duty = duty
        self.window = window
        self.span = span
        self.keep_over = max(keep_over, span)  # a tag ends only after span seconds
        self.max_tags = max_tags
        self.problem: str | None = None
        """Why profiling is off although ``start()`` was called (yappi busy elsewhere)."""
        self._local = threading.local()
        self._tags = itertools.count(1)  # yappi ignores a tag filter of 0
        self._new_tags = 0
        self._cleared_below = 1
        """Tags below this were cleared from yappi; only ``_kept`` has them."""
        self._long: OrderedDict[int, None] = OrderedDict()
        self._current: dict[int, int] = {}
        """Each loop thread's tag in use, by thread id."""
        self._kept: OrderedDict[int, tuple[FunctionStat, ...]] = OrderedDict()
        self._yappi_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self._running = False
        self._profiling = False
        self._stopping = threading.Event()
        self._hold_until = 0.0
        self._duty_thread: threading.Thread | None = None
        self._saved_clock: str | None = None

    # -- lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._running

    def start(self) -> None:
        """Start yappi (wall clock, builtins, every thread) with the iteration tags.

        Idempotent. If yappi is already running, or holds results, for someone
        else, profiling stays off and :attr:`problem` says so (logged once).
        """
        global _owner
        with _lock:
            if self._running:
                return
            if _owner is not None or yappi.is_running():
                self._refuse("yappi is already running in this process (another profiler?)")
                return
            if not yappi.get_func_stats().empty():
                self._refuse("yappi holds another profiler's results "
                             "(yappi.clear_stats() discards them)")
                return
            self._saved_clock = yappi.get_clock_type()
            yappi.set_clock_type("wall")
            # getattr on a threading.local is all C: no Python frame per profiled call
            yappi.set_tag_callback(functools.partial(getattr, self._local, "tag", 0))
            _owner = self
            self._running = True
            self.problem = None
            self._start_yappi()
            if self.duty < 1:
                self._start_duty_thread()

    def _start_duty_thread(self) -> None:
        self._stopping.clear()
        self._duty_thread = threading.Thread(
            target=self._duty_cycle, name="loopwatch-profiler", daemon=True)
        self._duty_thread.start()

    def stop_for_fork(self) -> None:
        """End the duty thread before a fork (see :mod:`loopwatch._core.forking`).

        yappi itself stays as it is.
        """
        thread = self._duty_thread
        if thread is None or thread is threading.current_thread():
            return
        self._stopping.set()
        join_for_fork(thread)
        self._duty_thread = None

    def resume_after_fork(self) -> None:
        """After a fork, in parent and child: the duty cycle goes on in a new thread."""
        if self._running and self.duty < 1 and self._duty_thread is None:
            self._start_duty_thread()

    def stop(self) -> None:
        """Stop yappi, keep the functions of recent long iterations, clear yappi's results.

        The clock type that was set before ``start()`` is restored; the tag
        callback is reset to none (yappi cannot say what it was).
        """
        global _owner
        with _lock:
            if not self._running:
                return
            self._running = False
            self._stopping.set()
            if self._duty_thread is not None:
                self._duty_thread.join()
                self._duty_thread = None
            with self._switch_lock:
                if self._profiling:
                    yappi.stop()
                    self._profiling = False
            with self._yappi_lock:
                # the iterations running now may be blocks the watchdog has yet to finish
                self._long.update(dict.fromkeys(self._current.values()))
                self._keep_long_ones()
                yappi.clear_stats()
                self._cleared_below = next(self._tags)
            yappi.set_tag_callback(None)
            if self._saved_clock is not None:
                yappi.set_clock_type(self._saved_clock)
            _owner = None

    def _refuse(self, why: str) -> None:
        self.problem = f"profile mode is off: {why}"
        log_once(f"profiler-refused-{why}", f"loopwatch {self.problem}", exc_info=False)

    # -- called in loop threads ------------------------------------------------

    def begin_iteration(self) -> int:
        """Mark the start of a loop iteration in this thread; return its tag.

        Call it in the loop's thread, first thing in every iteration. Cheap:
        one attribute read while yappi is off (tag 0: not profiled), a clock
        read and a few thread-local reads and writes while it is on.
        """
        if not self._profiling:
            return 0
        now = perf_counter()
        local = self._local
        try:
            started, tag_started = local.started, local.tag_started
        except AttributeError:  # first iteration in this thread
            started = tag_started = -math.inf
        local.started = now
        if now - tag_started < self.span:
            return local.tag  # type: ignore[no-any-return]
        if now - started >= self.keep_over and started > -math.inf:
            self._long[local.tag] = None
            if len(self._long) > 64:
                self._long.popitem(last=False)
        local.tag = tag = next(self._tags)
        local.tag_started = now
        self._current[threading.get_ident()] = tag
        self._new_tags += 1
        if self._new_tags >= self.max_tags:
            self._clear(tag)
        return tag

    def hold(self, seconds: float = 0.05) -> None:
        """Keep yappi on for at least ``seconds`` more (duty cycle only).

        The watchdog calls it while it samples a block, so that a block which
        began while profiling is profiled whole instead of being cut off by
        the end of the duty cycle's active part. A hold lasts one window at most.
        """
        self._hold_until = max(self._hold_until, perf_counter() + seconds)

    def _duty_cycle(self) -> None:
        """The duty thread: yappi on for ``duty * window``, off for the rest, until stop()."""
        on = self.duty * self.window
        off = self.window - on
        while not self._stopping.wait(on):
            latest = perf_counter() + self.window
            while (now := perf_counter()) < min(self._hold_until, latest):
                if self._stopping.wait(min(self._hold_until, latest) - now):
                    return
            with self._switch_lock:
                if self._profiling:
                    yappi.stop()
                    self._profiling = False
            if self._stopping.wait(off):
                break
            with self._switch_lock:
                if self._running:
                    self._start_yappi()

    def _start_yappi(self) -> None:
        if self._new_tags:
            # results of the last active part: keep what may still be asked for
            self._clear(next(self._tags))
        yappi.start(builtins=True, profile_threads=True)
        self._profiling = True

    def _clear(self, keep_from: int) -> None:
        """Clear yappi's results for tags below ``keep_from``, copying out long iterations."""
        if not self._yappi_lock.acquire(blocking=False):
            return  # the watchdog is reading: clear at the next chance
        try:
            self._keep_long_ones()
            yappi.clear_stats()
            self._cleared_below = keep_from
            self._new_tags = 0
        finally:
            self._yappi_lock.release()

    def _keep_long_ones(self) -> None:
        for tag in list(self._long):
            if tag not in self._kept and tag >= self._cleared_below:
                self._remember(tag, self._query(tag))
        self._long.clear()

    def _remember(self, tag: int, stats: tuple[FunctionStat, ...]) -> None:
        self._kept[tag] = stats
        while len(self._kept) > 128:
            self._kept.popitem(last=False)

    # -- called by the watchdog ------------------------------------------------

    def functions(self, tag: int, limit: int = 15) -> tuple[FunctionStat, ...]:
        """The functions called in the iteration with this tag, heaviest own time first.

        Names C functions too (``time.sleep``, ``re.Pattern.match``); loopwatch's
        own functions are left out. Empty when the tag fell outside the
        profiled part of the duty cycle, or its results were cleared before
        anyone asked. Costs about a millisecond.
        """
        kept = self._kept.get(tag)
        if kept is None:
            with self._yappi_lock:
                kept = self._kept.get(tag)
                if kept is None:
                    if tag < self._cleared_below or not self._running:
                        return ()
                    kept = self._query(tag)
                    # a tag still in use (a block shorter than span) may grow:
                    # keep the answer only once its thread has moved on
                    if tag not in list(self._current.values()):
                        self._remember(tag, kept)
        return kept[:limit]

    @staticmethod
    def _query(tag: int) -> tuple[FunctionStat, ...]:
        stats = yappi.get_func_stats(filter={"tag": tag})
        out = [f for f in map(_function_stat, stats)
               if f.name not in _TRAMPOLINES
               and (not f.file.startswith(_OWN_DIR) or f.file.endswith(os.sep + "demo.py"))]
        out.sort(key=lambda f: (-f.own, -f.total))
        return tuple(out)

    @staticmethod
    def aggregate(blocks: Iterable[Block], limit: int = 30) -> tuple[FunctionStat, ...]:
        """Sum the blocks' functions by function, heaviest own time first (for Report.functions).

        >>> a = FunctionStat("loads", "json/__init__.py", 299, 0.0, 0.2, 1)
        >>> b = FunctionStat("time.sleep", "time", 0, 0.1, 0.1, 1)
        >>> [(f.name, f.calls) for f in Profiler.aggregate([_block(a, b), _block(a)])]
        [('time.sleep', 1), ('loads', 2)]
        """
        sums: dict[tuple[str, str, int], list[Any]] = {}
        for block in blocks:
            for stat in block.functions:
                key = (stat.name, stat.file, stat.line)
                acc = sums.get(key)
                if acc is None:
                    sums[key] = [stat.own, stat.total, stat.calls]
                else:
                    acc[0] += stat.own
                    acc[1] += stat.total
                    acc[2] += stat.calls
        out = [FunctionStat(name, file, line, own, total, calls)
               for (name, file, line), (own, total, calls) in sums.items()]
        out.sort(key=lambda f: (-f.own, -f.total))
        return tuple(out[:limit])


def _function_stat(stat: Any) -> FunctionStat:
    name: str = stat.name
    module: str = stat.module
    if stat.builtin:
        method = _C_METHOD.match(name)
        if method:
            name = f"{method.group(2)}.{method.group(1)}"
        else:
            bound = _BUILTIN_METHOD.match(name)
            if bound:
                name = bound.group(1)
            if module and module != "builtins" and "." not in name:
                name = f"{module}.{name}"
    return FunctionStat(name=name, file=module, line=int(stat.lineno), own=float(stat.tsub),
                        total=float(stat.ttot), calls=int(stat.ncall))


def _block(*functions: FunctionStat) -> Block:
    """A minimal block carrying these functions (for examples)."""
    return Block(id=0, loop="", started=0.0, duration=0.0, cpu_ratio=None, kind="unknown",
                 frames=(), site=None, function=None, functions=functions)
