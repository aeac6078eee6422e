"""Several sessions at once, and sessions read from other threads while they watch.

Sessions share the process's one watchdog and each watches every loop in the
process. A session reports the blocks over its own threshold that ended while
it was running, whatever other sessions do, and ``report()`` / ``blocks`` may
be called from any thread at any time.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from typing import Any

import pytest
from workloads import BLOCK, THRESHOLD, marked

import loopwatch
from loopwatch import Block, Report
from loopwatch.watchdog import WALL_OFFSET, WATCHDOG

HERE = os.path.abspath(__file__)

SHORT = 0.1
"""Over the low threshold (THRESHOLD, 50 ms), under the high one."""
HIGH = 0.2
LONG = 0.3
"""Over both thresholds."""


def sites(blocks: Any) -> list[str | None]:
    return [b.site for b in blocks]


def watchdog_running() -> bool:
    return any(t.name == "loopwatch-watchdog" for t in threading.enumerate())


# -- nesting and order ------------------------------------------------------------------


def test_nested_sessions_keep_their_own_threshold_and_span() -> None:
    """Outer `with` (high threshold) around an inner `async with` (low): each gets its own blocks.

    The inner one sees only blocks that ended while it ran; the outer one keeps
    working after the inner one has left.
    """

    async def main() -> loopwatch.Session:
        await asyncio.sleep(0)
        time.sleep(SHORT)  # block: before-inner
        await asyncio.sleep(0)
        async with loopwatch.watch(threshold=THRESHOLD) as inner:
            time.sleep(SHORT)  # block: inner-only
            await asyncio.sleep(0)
            time.sleep(LONG)  # block: both
            await asyncio.sleep(0)
        assert not inner.running and WATCHDOG.active() and watchdog_running()
        time.sleep(LONG)  # block: outer-after
        await asyncio.sleep(0)
        return inner

    with loopwatch.watch(threshold=HIGH) as outer:
        inner = asyncio.run(main())
    assert not WATCHDOG.active() and not watchdog_running()

    assert sites(inner.report().blocks) == [marked(HERE, "inner-only"), marked(HERE, "both")]
    assert sites(outer.report().blocks) == [marked(HERE, "both"), marked(HERE, "outer-after")]
    # one block, handed to both sessions
    assert inner.report().blocks[1] == outer.report().blocks[0]
    # sites count only the session's own blocks
    assert {s.site: s.blocks for s in inner.report().sites if s.blocks} == {
        marked(HERE, "inner-only"): 1,
        marked(HERE, "both"): 1,
    }


def test_sessions_that_stop_in_another_order_than_they_started() -> None:
    """First started, first stopped: the second keeps watching with its own threshold."""
    low = loopwatch.watch(threshold=THRESHOLD).start()
    high = loopwatch.watch(threshold=HIGH).start()
    try:

        async def short_block() -> None:
            await asyncio.sleep(0)
            time.sleep(SHORT)  # block: low-only
            await asyncio.sleep(0)

        async def long_block() -> None:
            await asyncio.sleep(0)
            time.sleep(LONG)  # block: high-after-low
            await asyncio.sleep(0)

        asyncio.run(short_block())
        low.stop()
        assert WATCHDOG.active() and watchdog_running()
        frozen = low.report()
        asyncio.run(long_block())
        assert low.report() == frozen  # a stopped session's report does not change
    finally:
        high.stop()
        low.stop()
    assert not WATCHDOG.active() and not watchdog_running()
    assert sites(low.report().blocks) == [marked(HERE, "low-only")]
    assert sites(high.report().blocks) == [marked(HERE, "high-after-low")]


# -- sessions in several threads ---------------------------------------------------------


def test_sessions_in_two_threads_each_see_both_loops() -> None:
    """Two threads, each with its own session and loop, overlapping: sessions watch the process.

    A session is not tied to the thread that started it, so each one reports
    the other thread's block too.
    """
    both_watching = threading.Barrier(2)
    both_blocked = threading.Barrier(2)
    reports: dict[str, Report] = {}
    errors: list[BaseException] = []

    async def block_a() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # block: thread-a
        await asyncio.sleep(0)

    async def block_b() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # block: thread-b
        await asyncio.sleep(0)

    def worker(name: str, main: Any) -> None:
        try:
            with loopwatch.watch(threshold=THRESHOLD) as session:
                both_watching.wait(timeout=30)
                asyncio.run(main())
                both_blocked.wait(timeout=30)
            reports[name] = session.report()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            both_watching.abort()
            both_blocked.abort()

    threads = [
        threading.Thread(target=worker, args=("a", block_a), name="thread-a"),
        threading.Thread(target=worker, args=("b", block_b), name="thread-b"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    expected = sorted([marked(HERE, "thread-a"), marked(HERE, "thread-b")])
    for name in "ab":
        report = reports[name]
        assert sorted(sites(report.blocks)) == expected, name
        assert {b.loop.split("(")[-1] for b in report.blocks} == {"thread-a)", "thread-b)"}
    # the same two Block objects, whoever's report
    assert sorted(b.id for b in reports["a"].blocks) == sorted(b.id for b in reports["b"].blocks)


# -- reading from other threads ------------------------------------------------------------


def check_consistent(report: Report) -> None:
    """What holds for every snapshot of a session that has dropped nothing."""
    assert report.dropped_blocks == 0
    ids = [b.id for b in report.blocks]
    assert ids == sorted(set(ids)), ids
    per_site = Counter(b.site or "<unknown>" for b in report.blocks)
    assert {s.site: s.blocks for s in report.sites if s.blocks} == dict(per_site)
    assert sum(s.count for s in report.sites) >= len(report.blocks)
    json.dumps(report.to_dict())


class Readers:
    """Threads that read a session over and over, checking every snapshot.

    Each pauses a millisecond between reads: still hundreds of reads per block,
    but three threads that never let the GIL go would starve the watchdog of it
    on a loaded machine (a look 150 ms late), and a block it never saw has no
    line. That is the GIL's doing, not a reader's, and not what is tested here.
    """

    def __init__(self, session: loopwatch.Session, count: int = 3) -> None:
        self.session = session
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.seen: list[list[int]] = [[] for _ in range(count)]
        self.reads = [0] * count
        self._threads = [
            threading.Thread(target=self._read, args=(i,), name=f"reader-{i}")
            for i in range(count)
        ]

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _read(self, index: int) -> None:
        last: list[int] = []
        try:
            while not self.stop.is_set():
                report = self.session.report()
                check_consistent(report)
                ids = [b.id for b in report.blocks]
                # a later snapshot holds every block of an earlier one, in order
                assert ids[: len(last)] == last, (last, ids)
                blocks: list[Block] = self.session.blocks
                assert [b.id for b in blocks][: len(ids)] == ids
                last = ids
                self.seen[index].append(len(ids))
                self.reads[index] += 1
                time.sleep(0.001)
        except BaseException as exc:
            self.errors.append(exc)



def test_report_and_blocks_read_from_other_threads_while_the_loop_blocks() -> None:
    """Three threads read report() and blocks over and over during ten 150 ms blocks."""

    async def main() -> None:
        for _ in range(10):
            await asyncio.sleep(0)
            time.sleep(BLOCK)  # block: repeated

    with loopwatch.watch(threshold=THRESHOLD) as session, Readers(session) as readers:
        asyncio.run(main())
    assert not readers.errors, readers.errors
    report = session.report()
    check_consistent(report)
    # Every one of the ten is found at its line. Three threads reading report()
    # compete with the loop thread for the GIL, so an iteration that only had a little
    # to do (starting or closing the loop) may take over 50 ms too: a real block, elsewhere.
    repeated = [b for b in report.blocks if b.site == marked(HERE, "repeated")]
    assert len(repeated) == 10, sites(report.blocks)
    # a sleep never looks like computing (a ratio may be missing: see the report)
    assert not [b for b in repeated if b.kind in ("cpu", "mixed")], repeated
    # the readers ran while the loop blocked, not only before and after
    assert any(0 < n < 10 for counts in readers.seen for n in counts)


def test_stop_while_other_threads_read_the_report() -> None:
    """stop() (from three threads at once) while readers spin: no error, the result is final."""
    stoppers = threading.Barrier(3)
    errors: list[BaseException] = []

    async def main() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            time.sleep(BLOCK)  # block: before-stop

    def stop(session: loopwatch.Session) -> None:
        try:
            stoppers.wait(timeout=30)
            session.stop()
        except BaseException as exc:
            errors.append(exc)

    session = loopwatch.watch(threshold=THRESHOLD).start()
    try:
        with Readers(session) as readers:
            asyncio.run(main())
            threads = [threading.Thread(target=stop, args=(session,)) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            reads_at_stop = list(readers.reads)
            # keep reading the stopped session for a little while
            while min(r - s for r, s in zip(readers.reads, reads_at_stop, strict=True)) < 5:
                if readers.errors:
                    break
                time.sleep(0.001)
    finally:
        session.stop()
    assert not errors and not readers.errors, (errors, readers.errors)
    assert not session.running and not WATCHDOG.active()
    final = session.report()
    # (the readers may starve the loop thread into one more, real, block
    # while the loop starts or closes: see the test above)
    assert sites(final.blocks).count(marked(HERE, "before-stop")) == 3, sites(final.blocks)
    # after stop, every reader's last snapshot was the final one
    assert all(counts[-1] == len(final.blocks) for counts in readers.seen)


@pytest.mark.parametrize("order", ["last-in-first-out", "first-in-first-out"])
def test_sessions_come_and_go_in_another_thread_while_a_loop_blocks(order: str) -> None:
    """Pairs of sessions start and stop in another thread while a loop blocks repeatedly.

    The session that runs throughout sees every block; each short-lived one
    holds only blocks that ended while it was running, and stays consistent.
    """
    spans: list[loopwatch.Session] = []
    stop = threading.Event()

    async def main() -> None:
        for _ in range(6):
            await asyncio.sleep(0)
            time.sleep(BLOCK)  # block: churn

    def churn() -> None:
        while not stop.is_set():
            a = loopwatch.watch(threshold=THRESHOLD).start()
            b = loopwatch.watch(threshold=THRESHOLD).start()
            time.sleep(0.03)
            for s in (b, a) if order == "last-in-first-out" else (a, b):
                s.stop()
            spans.extend((a, b))
            time.sleep(0.01)

    with loopwatch.watch(threshold=THRESHOLD) as steady:
        thread = threading.Thread(target=churn)
        thread.start()
        try:
            asyncio.run(main())
        finally:
            stop.set()
            thread.join()
    assert sites(steady.report().blocks) == [marked(HERE, "churn")] * 6
    every = {b.id: b for b in steady.report().blocks}
    assert spans
    for session in spans:
        report = session.report()
        check_consistent(report)
        for block in report.blocks:
            assert every[block.id] == block
            end = block.started - WALL_OFFSET + block.duration  # on the loop's clock
            assert session.stopped is not None
            assert session.started - 1e-6 < end <= session.stopped + 1e-6
