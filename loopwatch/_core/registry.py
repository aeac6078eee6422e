"""The loops being watched: one probe per loop, and one CPU clock per loop thread."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any

from loopwatch._log import log_once
from loopwatch.probe import Probe, ThreadClock, make_probe


class LoopRegistry:
    """Which loops are watched, given up on, or a forked parent's; their probes and clocks.

    Only the watchdog uses it, under its lock. A test suite makes thousands of
    loops: lookups go by loop, never by scanning the list.
    """

    def __init__(self) -> None:
        #: the probes of the loops being watched, in the order they were found
        self.probes: list[Probe] = []
        self._by_loop: weakref.WeakKeyDictionary[Any, Probe] = weakref.WeakKeyDictionary()
        #: loops that made loopwatch fail: not watched again while the watchdog runs
        self._given_up: weakref.WeakSet[Any] = weakref.WeakSet()
        #: in a forked child: loops that were running in the parent (they never run here)
        self._inherited: weakref.WeakSet[Any] = weakref.WeakSet()
        #: one CPU clock per thread, shared by the loops that thread runs
        self._clocks: dict[int, ThreadClock] = {}

    def __bool__(self) -> bool:
        return bool(self.probes)

    def get(self, loop: asyncio.AbstractEventLoop) -> Probe | None:
        return self._by_loop.get(loop)

    @property
    def by_loop(self) -> Mapping[Any, Probe]:
        """Loop -> probe, one object for the registry's life (precise mode reads it)."""
        return self._by_loop

    def known_loops(self) -> int:
        """How many loops have a probe here (closed ones go with their loop object)."""
        return len(self._by_loop)

    def clock_threads(self) -> set[int]:
        """The threads whose CPU clock is kept open."""
        return set(self._clocks)

    def wants(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` is to be watched: not already, not given up on, not the parent's."""
        known = self._by_loop.get(loop)
        if known is not None and known.alive():
            return False
        return loop not in self._given_up and loop not in self._inherited

    def attach(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> Probe:
        """A probe for ``loop`` (run by ``thread_id``), registered."""
        probe = make_probe(loop, thread_id, self._clocks)
        self.probes.append(probe)
        self._by_loop[loop] = probe
        return probe

    def retire(self, probe: Probe) -> None:
        """The loop closed or ended: forget it (its CPU clock too, if no other loop shares it)."""
        if probe in self.probes:
            self.probes.remove(probe)
        if probe.thread_id in self._clocks and all(
            p.thread_id != probe.thread_id for p in self.probes
        ):
            # threads come and go in a long-running service: keep clocks of live loops only
            self._clocks.pop(probe.thread_id).close()

    def give_up(self, probe: Probe) -> None:
        """Never watch this probe's loop again (until the watchdog stops)."""
        self.retire(probe)
        loop = probe.loop
        if loop is not None:
            self._given_up.add(loop)
            self._by_loop.pop(loop, None)

    def inherited_from_parent(self, loops: list[Any]) -> None:
        """In a forked child: these loops were running in the parent and never run here."""
        self._inherited.update(loops)

    def drop_all(self) -> None:
        """Detach every probe and close every CPU clock."""
        for probe in self.probes:
            try:
                probe.detach()
            except Exception:
                log_once("detach", "loopwatch could not remove its hooks from a loop")
        self.probes = []
        self._by_loop.clear()  # cleared, not replaced: precise mode holds it
        for clock in self._clocks.values():
            clock.close()
        self._clocks = {}

    def forget_given_up(self) -> None:
        """A new watch starts afresh: loops given up on may be watched again."""
        self._given_up = weakref.WeakSet()
