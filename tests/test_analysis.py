"""What a block means: thousand cuts, GIL held or released, GC pauses, saturation, precise mode."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import time
from typing import Any

import pytest
from workloads import BLOCK, THRESHOLD, Stopwatch, json_blob, marked, pbkdf2_rounds

import loopwatch
from loopwatch import Report

HERE = os.path.abspath(__file__)


def watch_run(main: Any, **options: Any) -> Report:
    options.setdefault("threshold", THRESHOLD)
    with loopwatch.watch(**options) as session:
        asyncio.run(main())
    return session.report()


def test_thousand_cuts_make_a_site_but_no_block() -> None:
    """200 waits of 5 ms at one line: no block, but one site counting (nearly) all of them."""

    async def main() -> None:
        for _ in range(200):
            time.sleep(0.005)  # block: cut
            await asyncio.sleep(0)

    report = watch_run(main)
    assert not report.blocks
    site = next(s for s in report.sites if s.site == marked(HERE, "cut"))
    assert site.count >= 150
    assert site.blocks == 0
    assert site.total >= 150 * 0.005
    assert 0.005 <= site.p95 < THRESHOLD
    assert site.kind == "wait"
    assert report.sites[0] is site  # sorted by total time


def test_cuts_below_the_site_threshold_are_ignored() -> None:
    """Iterations shorter than site_threshold are not aggregated."""

    async def main() -> None:
        for _ in range(50):
            time.sleep(0.001)
            await asyncio.sleep(0)

    report = watch_run(main, site_threshold=0.004)
    assert not report.sites


@pytest.mark.parametrize(
    ("name", "released"),
    [("sleep", True), ("pbkdf2", True), ("json", False), ("python", False)],
)
def test_gil_held_or_released(name: str, released: bool) -> None:
    """Sleeps and hashlib let the watchdog run (GIL released); json.loads and Python hold it."""
    rounds = pbkdf2_rounds()
    blob = json_blob()

    def python_loop() -> None:
        deadline = time.thread_time() + BLOCK  # CPU time: see tests/workloads.py
        while time.thread_time() < deadline:
            pass

    work = {
        "sleep": lambda: time.sleep(BLOCK),
        "pbkdf2": lambda: hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", rounds),
        "json": lambda: json.loads(blob),
        "python": python_loop,
    }[name]

    async def main() -> None:
        await asyncio.sleep(0)
        work()

    # A big parse also sets off the garbage collector, often for most of the
    # block (then the advice rightly talks about GC): here only the GIL matters.
    gc.disable()
    try:
        (block,) = watch_run(main).blocks
    finally:
        gc.enable()
    assert block.gil_released is released, block.gil_held
    if name == "pbkdf2":
        assert block.kind == "cpu"
        assert "releases the GIL" in block.advice and 'offload("thread")' in block.advice
    if name in ("json", "python"):
        assert block.kind == "cpu"
        assert "holding the GIL" in block.advice and 'offload("process")' in block.advice


def test_a_gc_pause_is_named_as_such() -> None:
    """A block spent in the garbage collector says so instead of blaming the line."""

    class Node:
        def __init__(self) -> None:
            self.peer: Any = self

    gc.collect()
    gc.freeze()  # keep the rest of the heap out of the measured collection
    garbage = [Node() for _ in range(1_000_000)]  # cycles only the collector can free
    watch = Stopwatch()

    async def main() -> None:
        await asyncio.sleep(0)
        nonlocal garbage
        garbage = []
        with watch:
            gc.collect()

    try:
        report = watch_run(main, threshold=0.02)
    finally:
        gc.unfreeze()
    assert watch.elapsed > 0.02, "the collection must be long enough to be a block"
    (block,) = report.blocks
    assert block.gc_time > 0.5 * block.duration
    assert block.mostly_gc
    assert "garbage-collection" in block.advice


def test_saturated_loop_is_flagged() -> None:
    """A loop busy most of the time is saturated; its lag percentiles are measured."""

    async def main() -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.004)  # busy 80% of the time in short slices
            await asyncio.sleep(0.001)

    # Busy share is sampled by the watchdog's looks (every 0.8 x threshold): enough of
    # them (about 50 here) that an 80% busy loop does not read below half by chance.
    (stats,) = watch_run(main, threshold=0.05).loops
    assert stats.saturated
    assert stats.worst_window is not None and stats.worst_window > 0.5
    assert stats.busy_fraction > 0.5
    assert stats.lag_p50 is not None and stats.lag_max is not None
    assert stats.lag_max >= stats.lag_p50 >= 0


def test_idle_loop_is_not_saturated() -> None:
    """A loop that mostly waits is not saturated and shows little lag."""

    async def main() -> None:
        for _ in range(40):
            await asyncio.sleep(0.02)

    (stats,) = watch_run(main, threshold=0.1).loops
    assert not stats.saturated
    assert stats.busy_fraction < 0.3
    assert stats.lag_p50 is not None and stats.lag_p50 < 0.05


def test_precise_mode_names_the_task_step() -> None:
    """precise=True names the task step (and its coroutine) that took the time."""

    async def handler() -> None:
        await asyncio.sleep(0)
        time.sleep(BLOCK)

    async def main() -> None:
        await asyncio.create_task(handler(), name="checkout")

    (block,) = watch_run(main, precise=True).blocks
    assert block.callback is not None
    assert block.callback.startswith("Task 'checkout' step of ")
    assert "handler()" in block.callback
    assert block.duration == pytest.approx(BLOCK, rel=0.2)


def test_precise_mode_names_a_plain_callback() -> None:
    """precise=True names a plain call_soon callback by its function."""

    def slow_callback(done: asyncio.Future[None]) -> None:
        time.sleep(BLOCK)
        done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(slow_callback, done)
        await done

    (block,) = watch_run(main, precise=True).blocks
    assert block.callback is not None
    assert "slow_callback" in block.callback
    report = watch_run(main, precise=True)
    assert report.loops[0].iterations is not None  # precise mode counts every iteration


def test_precise_mode_is_removed_afterwards() -> None:
    """Leaving a precise session restores asyncio's Handle._run."""
    original = asyncio.events.Handle.__dict__["_run"]

    async def main() -> None:
        await asyncio.sleep(0)

    watch_run(main, precise=True)
    assert asyncio.events.Handle.__dict__["_run"] is original


def test_profile_mode_names_the_functions_of_a_gil_holding_block() -> None:
    """profile=True: a json.loads block lists json's loads and the decoder that ran."""
    blob = json_blob()

    async def main() -> None:
        await asyncio.sleep(0.01)
        json.loads(blob)
        await asyncio.sleep(0.01)

    report = watch_run(main, profile=True)
    (block,) = report.blocks
    names = {f.name for f in block.functions}
    assert "loads" in names
    assert "JSONDecoder.raw_decode" in names
    heaviest = block.functions[0]
    assert heaviest.name == "JSONDecoder.raw_decode"
    assert heaviest.own > 0.5 * block.duration
    assert report.functions and report.functions[0].name == "JSONDecoder.raw_decode"


def test_profile_mode_leaves_yappi_off_afterwards() -> None:
    """Leaving a profile session stops yappi and clears its results."""
    import yappi

    async def main() -> None:
        await asyncio.sleep(0)

    watch_run(main, profile=True)
    assert not yappi.is_running()
    assert yappi.get_func_stats().empty()


def test_bad_profile_duty_is_refused() -> None:
    """profile_duty must be a share of time in (0, 1]."""
    with pytest.raises(ValueError, match="invalid loopwatch profile_duty 2"):
        loopwatch.watch(profile=True, profile_duty=2)
