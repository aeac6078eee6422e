"""The watchdog is let in by a loop that lets go of the GIL only for moments.

A thread waiting for the GIL asks its holder to let go only after 5 ms without
a release. An asyncio loop that computes for a few milliseconds at a time and
calls ``select`` in between lets go each time, but takes the GIL back before a
waiting thread has woken, and each release starts the waiter's 5 ms over
(CPython's "convoy effect"): the watchdog could wait for seconds. A loop timed
on every iteration lets an overdue watchdog in.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from workloads import compute_in_steps

import loopwatch
from loopwatch import probe as probe_module
from loopwatch import watchdog as watchdog_module
from loopwatch._core import wakeup
from loopwatch._core.wakeup import DUE


def test_a_timed_loop_lets_an_overdue_watchdog_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overdue by more than 2 ms: the loop sleeps a moment, then less and less often."""
    slept: list[float] = []
    monkeypatch.setattr(wakeup, "_SLEEP", slept.append)
    loop = asyncio.new_event_loop()
    try:
        probe = probe_module.SelectorProbe(
            loop, threading.get_ident(), threading.get_native_id(), exact=True)
        select = loop._selector.select  # type: ignore[attr-defined]
        monkeypatch.setattr(DUE, "at", time.monotonic() + 60)
        select(0)
        assert slept == []  # due in a minute: nothing to do
        monkeypatch.setattr(DUE, "at", time.monotonic() - 0.01)
        select(0)
        assert slept == [wakeup.YIELD_FOR]
        select(0)
        assert len(slept) == 1  # not again before it is twice as late
        monkeypatch.setattr(probe.door, "_next", 0.0)
        select(0)
        assert len(slept) == 2
        probe.detach()
    finally:
        loop.close()


@pytest.mark.parametrize("precise", [True, False], ids=["timed", "sampled"])
def test_the_watchdog_keeps_looking_at_a_loop_computing_in_short_steps(
    monkeypatch: pytest.MonkeyPatch, precise: bool
) -> None:
    """1.5 s of 2 ms steps: the watchdog looks all along, whether the loop is timed on
    every iteration (let in from select) or not (let in by a timer on the loop)."""
    looks: list[float] = []
    look = watchdog_module.Watchdog.look

    def counted(self: Any, now: float, *args: Any, **kwargs: Any) -> float:
        if not kwargs.get("flush"):
            looks.append(now)
        return look(self, now, *args, **kwargs)

    monkeypatch.setattr(watchdog_module.Watchdog, "look", counted)
    with loopwatch.watch(threshold=0.1, precise=precise, sinks=[]):
        asyncio.run(compute_in_steps(1.5))
    during = [at for at in looks if at > looks[0]]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    # a look every 80 ms (0.8 x the threshold); kept away, gaps of seconds
    assert len(during) > 6, during
    assert max(gaps) < 0.6, gaps


def test_the_timer_stops_with_the_watch() -> None:
    """Nothing of loopwatch's is left on the loop once the watch is over."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with loopwatch.watch(threshold=0.1, sinks=[]):
            await asyncio.sleep(0.05)
            assert any(h._callback.__qualname__.startswith("DoorTimer")  # type: ignore[attr-defined]
                       for h in loop._scheduled)  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
        assert not [h for h in loop._scheduled  # type: ignore[attr-defined]
                    if not h.cancelled() and "DoorTimer" in h._callback.__qualname__]

    asyncio.run(main())
