"""Heartbeat loops (uvloop): a block is the callback that blocked, not all since the ping.

uvloop has no Python-level selector, so the watchdog only knows the loop has been
busy since its last unanswered ping. On a saturated loop, other callbacks ran
between that ping and the one that blocked; the samples tell when that one began.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from workloads import THRESHOLD, Stopwatch, marked

import loopwatch

uvloop = pytest.importorskip("uvloop")

HERE = __file__


def test_a_block_after_other_callbacks_is_measured_from_its_own_start() -> None:
    """60 ms of another callback, then a 120 ms sleep: the block is the sleep, within 10%."""
    watches: list[Stopwatch] = []

    def other_callback() -> None:
        deadline = time.monotonic() + 0.06
        while time.monotonic() < deadline:
            pass

    async def sleeper() -> None:
        watch = Stopwatch()
        with watch:
            time.sleep(0.12)  # block: sleep
        watches.append(watch)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await asyncio.sleep(0.2)
            loop.call_soon(other_callback)
            await loop.create_task(sleeper())
        await asyncio.sleep(0.2)

    with loopwatch.watch(threshold=THRESHOLD) as session:
        uvloop.run(main())
    blocks = [b for b in session.report().blocks if b.site == marked(HERE, "sleep")]
    assert len(blocks) == 3, [(b.duration, b.site) for b in session.report().blocks]
    for block, watch in zip(blocks, watches, strict=True):
        assert block.resolution == "heartbeat"
        assert block.duration == pytest.approx(watch.elapsed, rel=0.10)
        assert block.kind == "wait"


def test_a_block_in_the_first_callback_counts_from_the_start_of_the_run() -> None:
    """The watchdog's first look at a new uvloop loop may come a tick after its run began
    (here it is held off until the block is over): the block is still whole."""
    from loopwatch.watchdog import WATCHDOG

    watch = Stopwatch()

    async def main() -> None:
        with WATCHDOG.lock, watch:
            time.sleep(0.15)

    with loopwatch.watch(threshold=THRESHOLD) as session:
        uvloop.run(main())
    blocks = session.report().blocks
    assert len(blocks) == 1, blocks
    assert blocks[0].duration >= watch.elapsed
    assert blocks[0].duration == pytest.approx(watch.elapsed, rel=0.10)
