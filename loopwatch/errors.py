"""Exceptions raised by loopwatch on purpose (never by accident: see _log.log_once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopwatch.model import Report


class LoopBlockedError(AssertionError):
    """Raised when a ``watch(mode="raise")`` session ends after the loop blocked.

    It carries the session's :class:`~loopwatch.Report` as ``report``.
    """

    def __init__(self, report: Report) -> None:
        self.report = report
        worst = report.worst(1)[0] if report.blocks else None
        where = f" at {worst.site}" if worst is not None and worst.site else ""
        longest = f", longest {worst.duration * 1000:.0f} ms{where}" if worst else ""
        count = len(report.blocks) + report.dropped_blocks
        super().__init__(
            f"the event loop was blocked {count} time(s) for longer than "
            f"{report.threshold * 1000:g} ms{longest}"
        )
