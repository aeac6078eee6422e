"""Where findings go besides the report: :class:`Sink` objects.

Sinks, like ``on_block`` and block logging, are called in loopwatch's own
``loopwatch-sinks`` thread (:mod:`loopwatch._core.dispatch`), never in an event
loop's thread nor the watchdog's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from loopwatch.model import Block, LoopStats, Report, Stall


class WatchedSession(Protocol):
    """What a sink may read of the session it is opened for."""

    @property
    def running(self) -> bool: ...

    def report(self) -> Report: ...

    def live_loops(self) -> tuple[LoopStats, ...]: ...

    def running_loops(self) -> tuple[LoopStats, ...]: ...


class Sink:
    """Receives what a session finds. Subclass it and override what you need.

    Every method is called in loopwatch's sink thread (``loopwatch-sinks``),
    never in an event loop's thread nor the watchdog's, one call at a time and
    in order: a slow sink delays only the sinks after it. An exception is
    logged once per sink and method, and the sink keeps receiving calls.

    >>> import loopwatch
    >>> class Count(loopwatch.Sink):
    ...     blocks = 0
    ...     def block(self, block):
    ...         self.blocks += 1
    >>> counter = Count()
    >>> with loopwatch.watch(sinks=[counter]):
    ...     pass
    >>> counter.blocks
    0
    """

    def open(self, session: WatchedSession) -> None:
        """The session started. A sink may keep it, e.g. to read ``session.live_loops()``."""

    def block(self, block: Block) -> None:
        """A block was found (an iteration busy for longer than the session's threshold)."""

    def slow_iteration(self, loop: str, duration: float, site: str | None, blocked: bool) -> None:
        """An iteration took longer than the session's ``site_threshold``.

        Blocks come here too (``blocked=True``). Shorter iterations are not
        timed one by one in the default mode: that is what keeps watching free.
        """

    def stall(self, stall: Stall) -> None:
        """An iteration over the threshold that the machine caused, not the program (the
        loop's thread was not run: see :class:`~loopwatch.model.Stall`). Never a block."""

    def close(self) -> None:
        """The session stopped; no more calls follow for it."""
