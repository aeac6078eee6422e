"""The sinks thread: ``on_block``, block logging and :class:`~loopwatch.Sink` calls, in order.

None of them runs in the event loop's thread or in the watchdog's: a callback
that posts to a chat server, a logging handler writing to a slow disk, or a
metrics library taking a lock would otherwise stall the watchdog (and so
detection for every loop). They run one after another in a thread of their
own, ``loopwatch-sinks``, started on the first delivery and stopped with the
last session. Deliveries wait in a bounded queue: when sinks fall that far
behind, further deliveries are dropped and counted rather than held in memory.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loopwatch._core.forking import FORK_WAIT, join_for_fork
from loopwatch._log import log_once, logger

#: Deliveries waiting for the sinks thread; beyond this they are dropped (and counted).
MAX_PENDING = 10_000
#: How long leaving ``watch()`` waits for its session's callbacks to finish.
DRAIN_TIMEOUT = 5.0


class _Delivery:
    __slots__ = ("args", "call", "owner", "what")

    def __init__(self, owner: object, what: str, call: Callable[..., Any], args: tuple[Any, ...]):
        self.owner = owner
        self.what = what
        self.call = call
        self.args = args


class Dispatcher:
    """The process's one sinks thread: runs deliveries in order, off the watchdog."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[_Delivery] = deque()
        self._thread: threading.Thread | None = None
        self._running: _Delivery | None = None
        self._users = 0
        #: set in the before-fork hook: the thread ends as soon as its queue is empty
        self._forking = False
        self.dropped = 0
        #: what each sink (by id) was last given: filled by the watchdog thread only
        #: (findings reach the sessions one after another)
        self._last_given: dict[int, object] = {}

    def first_time(self, sink: object, finding: object) -> bool:
        """Whether ``finding`` is new to ``sink``: the one place findings are deduplicated.

        Nested sessions sharing a sink each hear of a finding; the sink gets it once.
        """
        key = id(sink)
        if self._last_given.get(key) is finding:
            return False
        self._last_given[key] = finding
        return True

    def forget(self, sink: object) -> None:
        """A session using ``sink`` stopped (a later object may get its id)."""
        self._last_given.pop(id(sink), None)

    def acquire(self) -> None:
        """A session starts using the dispatcher (the thread starts on first delivery)."""
        with self._cond:
            self._users += 1

    def release(self, wait: bool = True) -> None:
        """A session is done; with the last one gone, the thread finishes its queue and ends."""
        with self._cond:
            self._users -= 1
            if self._users > 0:
                return
            thread = self._thread
            self._cond.notify_all()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(DRAIN_TIMEOUT)

    def submit(self, owner: object, what: str, call: Callable[..., Any], *args: Any) -> bool:
        """Queue ``call(*args)``; False if the queue is full and it was dropped."""
        with self._cond:
            if len(self._queue) >= MAX_PENDING:
                self.dropped += 1
                return False
            self._queue.append(_Delivery(owner, what, call, args))
            if self._thread is None and not self._forking:
                self._start_thread()
            self._cond.notify_all()
        return True

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loopwatch-sinks", daemon=True)
        self._thread.start()

    def stop_for_fork(self) -> None:
        """End the sinks thread once it has delivered what is queued.

        See :mod:`loopwatch._core.forking`; a delivery that comes in meanwhile waits for
        :meth:`resume_after_fork`.
        """
        if not self._cond.acquire(timeout=FORK_WAIT):
            return  # held by a thread that is not coming back in time: fork as it is
        try:
            self._forking = True
            thread = self._thread
            self._cond.notify_all()
        finally:
            self._cond.release()
        join_for_fork(thread)

    def resume_after_fork(self) -> None:
        """In the parent: deliveries that came in during the fork get a thread again."""
        if not self._cond.acquire(timeout=FORK_WAIT):
            return
        try:
            self._forking = False
            if self._thread is None and self._queue:
                self._start_thread()
        finally:
            self._cond.release()

    def drain(self, owner: object, timeout: float | None = None) -> bool:
        """Wait until ``owner``'s deliveries have run; False if it took over ``timeout``."""
        if threading.current_thread() is self._thread:
            return False  # a callback stopping its own session: waiting would be forever
        timeout = DRAIN_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending_for(owner):
                left = deadline - time.monotonic()
                if left <= 0:
                    log_once(
                        "sinks-stuck",
                        "a loopwatch on_block callback or sink was still running after "
                        f"{timeout:.0f} s; watch() returned without waiting for it",
                        exc_info=False,
                    )
                    return False
                self._cond.wait(left)
        return True

    def _pending_for(self, owner: object) -> bool:
        running = self._running
        return (running is not None and running.owner is owner) or any(
            d.owner is owner for d in self._queue
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                self._running = None
                self._cond.notify_all()
                while not self._queue:
                    if self._users <= 0 or self._forking:
                        self._thread = None
                        return
                    self._cond.wait()
                delivery = self._running = self._queue.popleft()
            try:
                delivery.call(*delivery.args)
            except Exception:
                log_once(
                    f"sink {delivery.what} {id(delivery.owner)}",
                    f"loopwatch {delivery.what} raised; it keeps being called",
                )
            except BaseException:
                # SystemExit/KeyboardInterrupt inside a callback must not kill the
                # thread silently with deliveries still queued.
                logger.warning("loopwatch: %s raised BaseException", delivery.what, exc_info=True)
            del delivery


DISPATCHER = Dispatcher()


def _reset_after_fork() -> None:
    """In a forked child: the sinks thread is gone, and its lock may have gone with it held.

    The parent delivers what was queued before the fork; the child starts afresh
    (a new thread on its first delivery) so that no callback runs twice.
    """
    DISPATCHER._cond = threading.Condition()
    DISPATCHER._queue = deque()
    DISPATCHER._thread = None
    DISPATCHER._running = None
    DISPATCHER._forking = False


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=DISPATCHER.stop_for_fork,
        after_in_parent=DISPATCHER.resume_after_fork,
        after_in_child=_reset_after_fork,
    )
