"""The report on demand: a signal (``kill -USR1 PID``) writes the report so far to a file.

For services on Python 3.11-3.13, which ``loopwatch attach`` cannot reach. A
signal handler runs in the main thread between two bytecodes, possibly while
that thread holds one of loopwatch's locks (the loop's thread is often the
main thread, and strict mode records calls under the session's lock): so the
handler only sets a flag. The watchdog thread sees it after its next look (at
most 0.8 x threshold later) and hands the writing to the sinks thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from loopwatch._core.dispatch import DISPATCHER
from loopwatch._log import log_once, logger
from loopwatch.model import Report

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class ReportOnSignal:
    """One session's signal: installed at start (main thread only), removed at stop."""

    def __init__(self, signame: str, path: str, report: Callable[[], Report]) -> None:
        self.signum = signal.Signals[signame]
        self.path = path
        self._report = report
        self._wanted = False
        self._previous: Handler = None
        self._installed = False

    def install(self) -> bool:
        """Take the signal; False (and nothing changed) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            log_once(
                "report-signal-thread",
                f"loopwatch: report_signal {self.signum.name} needs watch() to start in the "
                "main thread; it is not set",
            )
            return False
        self._previous = signal.signal(self.signum, self._on_signal)
        self._installed = True
        return True

    def remove(self) -> None:
        """Give the signal back to whoever had it (only if it is still ours)."""
        if not self._installed:
            return
        self._installed = False
        try:
            if signal.getsignal(self.signum) == self._on_signal:
                signal.signal(self.signum, self._previous)
        except ValueError:  # stopped from another thread: signals are main-thread only
            log_once(
                "report-signal-restore",
                f"loopwatch could not give {self.signum.name} back: stop() ran outside the "
                "main thread",
            )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._wanted = True  # nothing else: see the module's docstring

    def after_look(self) -> None:
        """In the watchdog thread: a signal came since the last look."""
        if self._wanted:
            self._wanted = False
            DISPATCHER.submit(self, "report on signal", self._write)

    def target(self) -> str:
        return os.path.abspath(self.path.replace("{pid}", str(os.getpid())))

    def _write(self) -> None:
        path = self.target()
        try:
            self._report().save(path)  # whole: a reader never sees half a file
        except OSError as error:
            logger.warning("loopwatch: could not write the report to %s: %s", path, error)
            return
        logger.info("loopwatch: report written to %s (%s)", path, self.signum.name)
