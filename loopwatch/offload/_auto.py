"""``offload("auto")``: run inline until a watch session sees the function block the loop.

Each auto-offloaded function gets a :class:`Policy` on its first call. One
block listener (registered with the watchdog on the first auto call, never
holding a strong reference to a policy) looks for the function's code in the
stacks sampled during each block. The first block that is the function's
decides, once:

- ``cpu_ratio >= 0.5`` (mostly computing) and the function can be sent to a
  worker process: later calls run in a worker process;
- otherwise (waiting on I/O, a lock or a sleep; or no CPU clock; or the
  function cannot be pickled): later calls run in a thread.

A block "is the function's" when the function is in the block's most-sampled
stack, or (for a plain function, timed on each inline call) when its last
call took at least a fifth of the block. One iteration of the loop often runs
several things (``gather`` of two blocking calls is one block), so the
block's own ``cpu_ratio`` mixes them: a plain function is judged by its own
CPU time over wall time, summed over its inline calls (two clock reads per
call, less the time it was runnable but other processes had the CPUs); an
``async def`` function, which is not timed, by the block's.

Half, not the report's 0.8 for "cpu": in a process the waiting part costs
nothing, while in a thread the computing part still holds the GIL against the
loop; and a CPU-bound function measures below 0.8 on a busy machine.

A function does not have to wait for the loop to report a block: each inline
call of a plain function, and each step of an ``async def`` one (from one
``await`` to the next, which is what the loop cannot interrupt), is timed, and
one that ran longer than an active session's threshold decides at once. A loop
of calls that never yields (``for _ in range(4): await f()``) ends its
iteration only after the last call, too late for the block to move the rest.

The decision is logged once on the ``loopwatch`` logger and added to every
active session's report (``Report.events``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Literal

from loopwatch._log import log_once, logger
from loopwatch.model import Block, Frame
from loopwatch.offload._refs import display_name, why_not_sendable

if TYPE_CHECKING:
    from loopwatch._core.findings import Found

#: cpu_ratio at or above which a blocking function goes to a process, not a thread.
PROCESS_RATIO = 0.5
#: A timed call at least this share of a block it appears in makes the block its own.
SHARE = 0.2

Decision = Literal["thread", "process"]


def _line_range(code: Any) -> tuple[int, int]:
    first = code.co_firstlineno
    last = first
    for _, _, line in code.co_lines():
        if line is not None and line > last:
            last = line
    for const in code.co_consts:  # nested code (comprehensions before 3.12) is part of it too
        if hasattr(const, "co_lines"):
            last = max(last, _line_range(const)[1])
    return first, last


class Policy:
    """Where one auto-offloaded function runs: ``None`` (inline) until a block decides."""

    __slots__ = (
        "__weakref__",
        "calls",
        "cpu",
        "first",
        "func",
        "key",
        "last",
        "last_wall",
        "registered",
        "target",
        "wall",
    )

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.target: Decision | None = None
        self.registered = False
        self.wall = self.cpu = self.last_wall = 0.0  # inline timing (plain functions)
        self.calls = 0
        code = getattr(func, "__code__", None)
        if code is None:
            self.key = None
            self.first = self.last = 0
        else:
            self.key = (code.co_filename, code.co_name)
            self.first, self.last = _line_range(code)

    def register(self) -> None:
        """Start listening for this function's blocks (on its first call)."""
        self.registered = True
        if self.key is None:
            logger.debug("offload('auto'): %s has no Python code to find in a block; "
                         "it always runs inline", display_name(self.func))
            return
        _register(self)

    def run_timed(self, func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Call a plain function inline, adding its wall and CPU time to the totals.

        Time spent runnable but not running (other processes had the CPUs) is
        not waiting: it is taken out of the wall time where the kernel says
        how much it was. That reading costs a few microseconds, so it is taken
        for the first calls and after a slow one, when a decision is near.
        """
        queued = _run_queue_wait() if self.calls < 3 or self.last_wall > 0.001 else None
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - wall
            used = time.thread_time() - cpu
            if queued is not None:
                now = _run_queue_wait()
                if now is not None:
                    elapsed = max(used, elapsed - (now - queued))
            self.calls += 1
            self.last_wall = elapsed
            self.wall += elapsed
            self.cpu += used
            self.ran(elapsed, self.cpu / self.wall if self.wall > 0 else None, "over its calls")

    def ran(self, elapsed: float, ratio: float | None, over: str) -> None:
        """An inline call (or step) took ``elapsed`` on the loop: decide now if that is a block.

        A block is what an active session would report: longer than its threshold.
        """
        if self.target is not None:
            return
        threshold = _active_threshold()
        if threshold is None or elapsed <= threshold:
            return
        measured = f"cpu_ratio {ratio:.2f} {over}" if ratio is not None else ""
        site = f"{self.key[0]}:{self.first}" if self.key is not None else None
        self._decide(elapsed, ratio, measured, site)

    def downgrade(self, reason: str) -> None:
        """Send later calls to a thread instead of a process, and say why once."""
        if self.target == "thread":
            return
        self.target = "thread"
        message = (f"offload('auto'): {_qualified(self.func)} now runs in a thread instead "
                   f"of a worker process: {reason}")
        logger.warning(message)
        _broadcast(message)

    def consider(self, block: Block, frame: Frame, most_sampled: bool) -> None:
        """Decide, if this block is this function's (see the module docstring).

        ``frame`` is the function's frame in the stack where it was found.
        """
        if self.target is not None:
            return
        timed = self.wall > 0
        if not most_sampled and not (timed and self.last_wall >= SHARE * block.duration):
            return
        if timed:
            ratio: float | None = min(1.0, self.cpu / self.wall)
            measured = f"cpu_ratio {ratio:.2f} over its calls"
        else:
            ratio = block.cpu_ratio
            measured = f"block cpu_ratio {ratio:.2f}" if ratio is not None else ""
        site = block.site if most_sampled and block.site else frame.location
        self._decide(block.duration, ratio, measured, site)

    def _decide(
        self, duration: float, ratio: float | None, measured: str, site: str | None
    ) -> None:
        if ratio is None:
            measured = "no CPU clock for the loop thread"
        elif ratio >= PROCESS_RATIO:
            measured += ": mostly computing"
        else:
            measured += ": mostly waiting"
        target: Decision = "thread"
        where = "a thread"
        if ratio is not None and ratio >= PROCESS_RATIO:
            reason = why_not_sendable(self.func)
            if reason is None:
                target, where = "process", "a worker process"
            else:
                where = f"a thread, not a worker process: {reason}"
        self.target = target
        at = f" at {site}" if site else ""
        message = (
            f"offload('auto'): {_qualified(self.func)} blocked the event loop for "
            f"{duration * 1000:.0f} ms{at} ({measured}); later calls run in {where}"
        )
        logger.warning(message)
        _broadcast(message)


@types.coroutine
def timed_steps(policy: Policy, coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Await ``coro``, timing each step (from one ``await`` to the next) for ``policy``.

    A step is what runs on the loop without a break: the part of an ``async
    def`` function that can block it.
    """
    send: Any = coro.send
    value: Any = None
    error: BaseException | None = None
    clock, cpu_clock = time.perf_counter, time.thread_time
    steps = 0
    while True:
        # As for a plain function: time spent waiting for a CPU is not waiting, read
        # (a few microseconds) for the first steps and after a slow one.
        queued = _run_queue_wait() if steps < 3 or policy.last_wall > 0.001 else None
        steps += 1
        began, cpu = clock(), cpu_clock()
        try:
            yielded = send(value) if error is None else coro.throw(error)
        except StopIteration as done:
            _step_ran(policy, clock() - began, cpu_clock() - cpu, queued)
            return done.value
        except BaseException:
            _step_ran(policy, clock() - began, cpu_clock() - cpu, queued)
            raise
        _step_ran(policy, clock() - began, cpu_clock() - cpu, queued)
        try:
            value, error = (yield yielded), None
        except BaseException as thrown:  # cancellation and the like, into the coroutine
            value, error = None, thrown


def _step_ran(policy: Policy, elapsed: float, cpu: float, queued: float | None) -> None:
    if policy.target is None:
        if queued is not None:
            now = _run_queue_wait()
            if now is not None:
                elapsed = max(cpu, elapsed - (now - queued))
        policy.last_wall = elapsed
        policy.ran(elapsed, min(1.0, cpu / elapsed) if elapsed > 0 else None, "in that step")


def _active_threshold() -> float | None:
    """The lowest threshold of the running watch sessions, or None when none runs."""
    module = sys.modules.get("loopwatch.watchdog")  # not imported: nothing watches
    return None if module is None else module.WATCHDOG.threshold


def _run_queue_wait() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux), or None."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return None
    try:
        fields = os.read(fd, 128).split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
    finally:
        os.close(fd)


def _qualified(func: Any) -> str:
    module = getattr(func, "__module__", None)
    name = display_name(func)
    return f"{module}.{name}" if module else name


def _broadcast(message: str) -> None:
    try:
        from loopwatch.watchdog import WATCHDOG

        WATCHDOG.broadcast_event(message)
    except Exception:
        log_once("offload-event", "loopwatch could not add an offload decision to the report")


_lock = threading.Lock()
_by_code: dict[tuple[str, str], list[weakref.ref[Policy]]] = {}
_listening = False


def _register(policy: Policy) -> None:
    global _listening
    assert policy.key is not None
    with _lock:
        refs = [r for r in _by_code.get(policy.key, ()) if r() is not None]
        refs.append(weakref.ref(policy))
        _by_code[policy.key] = refs
        if not _listening:
            from loopwatch.watchdog import add_block_listener

            add_block_listener(_on_block)
            _listening = True


def _on_block(found: Found) -> None:
    """Called by the watchdog thread for every block: cheap when it is not ours."""
    if not _by_code:
        return
    block = found.block
    ours = _innermost_policy(block.frames)
    if ours is not None:
        ours[0].consider(block, ours[1], most_sampled=True)
    for stack in block.stacks:
        other = _innermost_policy(stack.frames)
        if other is not None and (ours is None or other[0] is not ours[0]):
            other[0].consider(block, other[1], most_sampled=False)


def _innermost_policy(frames: tuple[Frame, ...]) -> tuple[Policy, Frame] | None:
    """The innermost auto-offloaded function in a stack (the one blocking), and its frame."""
    for frame in reversed(frames):
        refs = _by_code.get((frame.file, frame.function))
        if not refs:
            continue
        for ref in tuple(refs):
            policy = ref()
            if policy is not None and policy.first <= frame.line <= policy.last:
                return policy, frame
    return None
