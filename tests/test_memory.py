"""Bounded memory: what a long session keeps stays capped, and the totals stay right."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref

import pytest
from workloads import BLOCK, THRESHOLD, marked

import loopwatch
from loopwatch import model
from loopwatch._core.findings import Found
from loopwatch.model import (
    MAX_SITES,
    OTHER_SITES,
    Block,
    Frame,
    SiteAccumulator,
    SiteTable,
    percentile,
)
from loopwatch.watchdog import WATCHDOG, Cut


def _block_a() -> None:
    time.sleep(BLOCK)  # block: a


def _block_b() -> None:
    time.sleep(BLOCK)  # block: b


def _block_c() -> None:
    time.sleep(BLOCK)  # block: c


def _block_d() -> None:
    time.sleep(BLOCK)  # block: d


async def _blocking(*calls: object) -> None:
    for call in calls:
        await asyncio.sleep(0)
        call()  # type: ignore[operator]
    await asyncio.sleep(0)


def _only_blocks(**options: object) -> loopwatch.Session:
    # site_threshold = threshold: no "thousand cuts" entries, only the blocks, in the table
    return loopwatch.watch(threshold=THRESHOLD, site_threshold=THRESHOLD, **options)


# -- blocks kept ---------------------------------------------------------------------------


def test_blocks_beyond_max_blocks_are_dropped_counted_and_still_in_sites() -> None:
    """max_blocks keeps the latest blocks; older ones are counted as dropped and stay in sites."""
    with _only_blocks(max_blocks=2) as session:
        asyncio.run(_blocking(_block_a, _block_b, _block_a, _block_b))
    report = session.report()
    site_a, site_b = marked(__file__, "a"), marked(__file__, "b")
    assert [b.site for b in report.blocks] == [site_a, site_b]
    assert report.blocks[0].id < report.blocks[1].id
    assert report.dropped_blocks == 2
    assert {s.site: (s.count, s.blocks) for s in report.sites} == {
        site_a: (2, 2), site_b: (2, 2)
    }


# -- sites kept ----------------------------------------------------------------------------


def test_sites_beyond_the_cap_are_summed_in_other_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks at sites first seen once the table is full go to one entry; totals stay exact."""
    monkeypatch.setattr(model, "MAX_SITES", 2)
    with _only_blocks() as session:
        asyncio.run(_blocking(_block_a, _block_b, _block_c, _block_d, _block_a))
    report = session.report()
    by_site = {s.site: s for s in report.sites}
    site_a, site_b = marked(__file__, "a"), marked(__file__, "b")
    assert set(by_site) == {site_a, site_b, OTHER_SITES}
    assert by_site[site_a].count == 2  # a known site keeps counting once the table is full
    other = by_site[OTHER_SITES]
    assert (other.count, other.blocks) == (2, 2)
    folded = [b for b in report.blocks if b.site not in (site_a, site_b)]
    assert other.total == pytest.approx(sum(b.duration for b in folded))
    assert other.max == max(b.duration for b in folded)
    assert report.total_blocked == pytest.approx(sum(b.duration for b in report.blocks))
    assert "first seen after 2 others" in other.advice


def _fed_block(number: int) -> Block:
    frame = Frame(f"generated_{number}.py", 3, f"gen_{number}")
    return Block(
        id=number, loop="fed", started=0.0, duration=0.1, cpu_ratio=1.0, kind="cpu",
        frames=(frame,), site=frame.location, function=frame.function,
    )


def test_a_running_session_keeps_at_most_max_sites_apart() -> None:
    """Blocks and cuts at more distinct lines than MAX_SITES: one extra entry holds the rest."""
    extra = 300
    with loopwatch.watch(threshold=THRESHOLD) as session:
        for number in range(MAX_SITES + extra):
            session.receive_block(Found(_fed_block(number), 0.0, 0.1))
        for number in range(MAX_SITES + extra):
            session.receive_cut(Cut(0.01, None, f"generated_{number}.py:3", None, 0.0))
    report = session.report()
    assert len(report.sites) == MAX_SITES + 1
    other = next(s for s in report.sites if s.site == OTHER_SITES)
    assert (other.count, other.blocks) == (2 * extra, extra)
    assert sum(s.count for s in report.sites) == 2 * (MAX_SITES + extra)
    assert sum(s.blocks for s in report.sites) == MAX_SITES + extra
    # the blocks' time, exact over the extra entry too; the cuts' time is in the site totals
    assert report.total_blocked == pytest.approx((MAX_SITES + extra) * 0.1)
    assert sum(s.total for s in report.sites) == pytest.approx((MAX_SITES + extra) * 0.11)


def test_site_table_refuses_a_bad_cap() -> None:
    """A cap that is not a whole number >= 1 is named in the error."""
    with pytest.raises(ValueError, match="max_sites must be a whole number >= 1, not 0"):
        SiteTable(max_sites=0)


# -- durations kept per site ---------------------------------------------------------------


def test_site_durations_are_capped_and_count_total_max_exact() -> None:
    """However many slow iterations a site has, it keeps KEEP durations; the sums are exact."""
    acc = SiteAccumulator("app.py:1", "f")
    for n in range(1, 20_001):
        acc.add(n / 10_000, cpu_ratio=None)
    site = acc.freeze()
    assert len(acc.durations) == SiteAccumulator.KEEP
    assert site.count == 20_000
    assert site.max == 2.0
    assert site.total == pytest.approx(sum(n / 10_000 for n in range(1, 20_001)))


def test_site_p95_describes_the_whole_run_not_its_latest_part() -> None:
    """p95 samples the whole run: a quiet recent stretch does not hide the older slow ones."""
    rng = random.Random(7)
    # 10% of a long run's slow iterations took 50 ms, the rest 5 ms; then a quiet
    # stretch of 2 ms ones (a sixth of the run) that keeping mostly recent values would report
    durations = [0.05 if rng.random() < 0.1 else 0.005 for _ in range(100_000)] + [0.002] * 20_000
    acc = SiteAccumulator("app.py:1", "f")
    for duration in durations:
        acc.add(duration, cpu_ratio=None)
    assert percentile(durations, 95) == 0.05
    assert acc.freeze().p95 == 0.05


# -- loops that come and go ----------------------------------------------------------------


async def _short() -> None:
    await asyncio.sleep(0)


def _short_lived_loops(in_threads: int, in_main: int) -> None:
    for _ in range(in_main):
        asyncio.run(_short())
    for start in range(0, in_threads, 4):
        batch = [threading.Thread(target=asyncio.run, args=(_short(),))
                 for _ in range(min(4, in_threads - start))]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()


def test_closed_loops_leave_no_probe_behind() -> None:
    """Loops created and closed (some in threads that have ended) are dropped by the watchdog."""
    with loopwatch.watch(threshold=THRESHOLD) as session:
        _short_lived_loops(in_threads=12, in_main=8)
        WATCHDOG.flush()
        probes = list(WATCHDOG._loops.probes)
        tracked = WATCHDOG._loops.known_loops()
    assert len(session.report().loops) == 20  # each was watched, and handed in its statistics
    assert probes == []
    assert tracked == 0


def test_ended_threads_leave_no_cpu_clock_behind() -> None:
    """Once the threads that ran loops have ended, the watchdog keeps no CPU clock for them."""
    with loopwatch.watch(threshold=THRESHOLD):
        _short_lived_loops(in_threads=8, in_main=2)
        WATCHDOG.flush()
        clocks = WATCHDOG._loops.clock_threads()
    # the main thread is the only one alive that ran a loop
    assert clocks <= {threading.get_ident()}


async def _compute() -> None:
    await asyncio.sleep(0)
    # BLOCK of CPU, not of wall time: on a busy machine part of the wall time is
    # waiting for a CPU, and an iteration long only because of that is a stall
    deadline = time.thread_time() + BLOCK
    while time.thread_time() < deadline:  # pure Python: the thread's CPU clock runs
        pass
    await asyncio.sleep(0)


def test_a_thread_after_an_ended_one_gets_its_own_cpu_clock() -> None:
    """Threads started one after another (often given the same id) each get a CPU ratio."""
    with loopwatch.watch(threshold=THRESHOLD) as session:
        for _ in range(3):
            thread = threading.Thread(target=asyncio.run, args=(_compute(),))
            thread.start()
            thread.join()
    ratios = [b.cpu_ratio for b in session.report().blocks]
    assert len(ratios) == 3
    assert all(r is not None and r > 0.5 for r in ratios), ratios


def test_distinct_events_are_capped() -> None:
    """A long session's events (each naming a loop, say) stay capped."""
    with loopwatch.watch(threshold=THRESHOLD) as session:
        for number in range(3000):
            WATCHDOG.broadcast_event(f"something happened to loop #{number}")
    assert len(session.report().events) < 3000


class _Payload:
    """Stands for what a user's callback is given: a request body, a file, a socket."""


def _collected_after_a_blocking_callback(watching: bool) -> bool:
    """Whether an object passed to a callback that blocked is gone once the loop idles."""

    def handle(payload: _Payload) -> None:
        time.sleep(BLOCK)  # block: holds the payload

    async def main() -> bool:
        payload = _Payload()
        alive = weakref.ref(payload)
        asyncio.get_running_loop().call_soon(handle, payload)
        del payload
        await asyncio.sleep(0)  # the callback runs (and blocks) in this iteration
        await asyncio.sleep(4 * THRESHOLD)  # idle: the watchdog takes several looks
        return alive() is None

    if not watching:
        return asyncio.run(main())
    with loopwatch.watch(threshold=THRESHOLD) as session:
        collected = asyncio.run(main())
    assert [b.site for b in session.report().blocks] == [marked(__file__, "holds the payload")]
    return collected


def test_an_object_given_to_a_blocking_callback_is_not_kept_alive() -> None:
    """loopwatch keeps no frame, locals or handle of the loop's: the payload dies with its call."""
    assert _collected_after_a_blocking_callback(watching=False)  # without loopwatch, at once
    assert _collected_after_a_blocking_callback(watching=True)
