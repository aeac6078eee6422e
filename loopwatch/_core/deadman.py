"""faulthandler as a dead man's switch: a stack from inside a C call that holds the GIL."""

from __future__ import annotations

import faulthandler
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from loopwatch._core.forking import os_thread_count, wait_for_thread_exit
from loopwatch._log import log_once
from loopwatch.model import Frame
from loopwatch.stacks import parse_faulthandler

Dump = tuple[float, dict[int, tuple[Frame, ...]]]
"""When a deadman dump fired (loop clock), and the stack of each thread in it."""


class Deadman:
    """faulthandler armed as a dead man's switch for the watchdog thread.

    Re-arming starts a C thread (tens of microseconds), so it is re-armed only
    once half its timeout has passed. If the watchdog could not run for that
    long, faulthandler dumps every thread's stack into a temporary file, which
    the watchdog parses when it next runs.

    faulthandler's timer is process-global. Other users of it (pytest's
    ``faulthandler_timeout``) are detected by wrapping its two functions; on
    conflict the deadman steps aside and says so once.
    """

    def __init__(self, on_event: Callable[[str], None]) -> None:
        self._on_event = on_event
        self._file: Any = None
        self._armed_at: float | None = None
        self._timeout = 0.0
        self._offset = 0
        self.enabled = False
        #: set when another user of faulthandler's timer appeared; cleared by reset()
        self.refused = False
        self._original_arm = faulthandler.dump_traceback_later
        self._original_cancel = faulthandler.cancel_dump_traceback_later

    def start(self) -> None:
        if self.enabled or self.refused:
            return
        # Kept open across many ticks and closed in stop(): no context manager fits.
        self._file = tempfile.TemporaryFile(prefix="loopwatch-deadman-")  # noqa: SIM115
        self._offset = 0
        self._original_arm = faulthandler.dump_traceback_later
        self._original_cancel = faulthandler.cancel_dump_traceback_later
        faulthandler.dump_traceback_later = self._foreign_arm
        faulthandler.cancel_dump_traceback_later = self._foreign_cancel
        self.enabled = True

    def _foreign_arm(self, *args: Any, **kwargs: Any) -> None:
        self._step_aside()
        self._original_arm(*args, **kwargs)

    def _foreign_cancel(self) -> None:
        self._step_aside()
        self._original_cancel()

    def _step_aside(self) -> None:
        if not self.enabled:
            return
        message = (
            "faulthandler.dump_traceback_later is used by other code (pytest's "
            "faulthandler_timeout?); loopwatch's deadman switch is off, so blocks inside "
            "C calls that hold the GIL may lack the exact line"
        )
        self.stop(cancel=False)
        self.refused = True
        if log_once("deadman-conflict", message, exc_info=False):
            self._on_event(message)

    def service(self, now: float, timeout: float) -> list[Dump]:
        """Collect dumps that fired, and keep the switch armed. Returns (fire time, stacks)."""
        if not self.enabled:
            return []
        dumps = []
        fired = os.fstat(self._file.fileno()).st_size > self._offset
        due = self._armed_at is None or now - self._armed_at > self._timeout / 2
        if fired or due or timeout != self._timeout:
            # Cancelling joins faulthandler's thread: no dump is being written after it.
            self._original_cancel()
            if fired:
                dumps = self._read(self._armed_at)
            self._original_arm(timeout, repeat=False, file=self._file.fileno(), exit=False)
            self._armed_at = now
            self._timeout = timeout
        return dumps

    def _read(self, armed_at: float | None) -> list[Dump]:
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        text = os.pread(fd, size - self._offset, self._offset).decode("utf-8", "replace")
        self._offset = size
        if size > 1 << 20:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            self._offset = 0
        fired_at = (armed_at or time.monotonic()) + self._timeout
        return [(fired_at, parse_faulthandler(text))]

    def disarm(self) -> None:
        """Cancel the timer, and see its thread gone; the next :meth:`service` arms it again.

        Used before a fork: cancelling returns once faulthandler's thread has
        stopped running, but the kernel counts it until it has exited, and a fork
        a few microseconds later would still warn about a multi-threaded process.
        """
        if self.enabled and self._armed_at is not None:
            threads = os_thread_count()
            self._original_cancel()
            self._armed_at = None
            wait_for_thread_exit(threads)

    def forget_after_fork(self, maybe_armed: bool) -> None:
        """In a forked child: let go of the parent's file (its offset is shared with the parent).

        faulthandler's timer thread does not survive a fork, and cancelling a
        timer that was armed at fork time then waits forever for that thread:
        if the timer may still be armed, it is never touched again here.
        """
        if not self.enabled:
            return
        self.stop(cancel=False)
        if maybe_armed:
            self.refused = True

    def stop(self, cancel: bool = True) -> None:
        if not self.enabled:
            return
        self.enabled = False
        if cancel:
            self._original_cancel()
        if faulthandler.dump_traceback_later == self._foreign_arm:
            faulthandler.dump_traceback_later = self._original_arm
        if faulthandler.cancel_dump_traceback_later == self._foreign_cancel:
            faulthandler.cancel_dump_traceback_later = self._original_cancel
        self._file.close()
        self._file = None
        self._armed_at = None
