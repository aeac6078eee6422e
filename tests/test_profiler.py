"""Profile mode's backend on its own: yappi calls tagged by loop iteration, in real threads."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yappi  # type: ignore[import-untyped]

from loopwatch.model import Block, FunctionStat
from loopwatch.profiler import Profiler

BLOB = json.dumps([{"id": i, "tags": ["a", "b"], "name": "x" * 16} for i in range(60_000)])


@pytest.fixture(autouse=True)
def no_profiler_leaks() -> Iterator[None]:
    """After each test: yappi stopped and empty, wall clock not forced, no duty thread."""
    clock = yappi.get_clock_type()
    yield
    assert not yappi.is_running(), "yappi was left running"
    assert yappi.get_func_stats().empty(), "yappi results were left behind"
    assert yappi.get_clock_type() == clock
    assert not [t for t in threading.enumerate() if t.name == "loopwatch-profiler"]


@pytest.fixture
def profiler() -> Iterator[Profiler]:
    profiler = Profiler()
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.stop()


def in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread (like a loop thread) and return its result."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


def names(stats: tuple[FunctionStat, ...]) -> list[str]:
    return [s.name for s in stats]


def test_functions_of_an_iteration_name_json_loads(profiler: Profiler) -> None:
    """A json.loads in one iteration is found under that iteration's tag, C work included."""

    def loop_thread() -> tuple[int, int]:
        first = profiler.begin_iteration()
        json.loads(BLOB)
        second = profiler.begin_iteration()
        sum(range(1000))
        profiler.begin_iteration()
        return first, second

    first, second = in_thread(loop_thread)
    assert first and second and first != second
    found = profiler.functions(first)
    assert "loads" in names(found)
    # the C scanner is not a function to yappi: its time is raw_decode's own time
    heaviest = found[0]
    assert heaviest.name == "JSONDecoder.raw_decode"
    assert heaviest.own == pytest.approx(
        next(s for s in found if s.name == "loads").total, rel=0.2)
    assert "loads" not in names(profiler.functions(second))
    assert "sum" in names(profiler.functions(second))


def test_in_an_event_loop_the_blocking_call_tops_the_list(profiler: Profiler) -> None:
    """Wired as the probe does (after each select), a task's json.loads heads its iteration."""
    import asyncio

    loop = asyncio.new_event_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select
    stamps: list[tuple[float, int]] = []

    def select_then_begin(timeout: float | None = None) -> Any:
        events = select(timeout)
        stamps.append((time.perf_counter(), profiler.begin_iteration()))
        return events

    async def handler() -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        json.loads(BLOB)
        for _ in range(20):
            await asyncio.sleep(0)

    selector.select = select_then_begin
    try:
        loop.run_until_complete(handler())
    finally:
        loop.close()
    _, tag = max((later[0] - earlier[0], earlier[1])
                 for earlier, later in itertools.pairwise(stamps))
    found = profiler.functions(tag)
    assert found[0].name == "JSONDecoder.raw_decode", found[:3]
    assert "_contextvars.Context.run" not in names(found)


def test_c_functions_are_named_with_their_module(profiler: Profiler) -> None:
    """Builtins and C methods get readable names (time.sleep, re.Pattern.match)."""
    import re

    pattern = re.compile(r"(a+)+b")

    def loop_thread() -> int:
        tag = profiler.begin_iteration()
        time.sleep(0.03)
        pattern.match("a" * 18)
        profiler.begin_iteration()
        return tag

    found = profiler.functions(in_thread(loop_thread))
    by_name = {s.name: s for s in found}
    assert by_name["time.sleep"].own >= 0.025  # wall clock: sleeping counts
    assert by_name["time.sleep"].file == "time" and by_name["time.sleep"].line == 0
    assert "re.Pattern.match" in by_name
    assert found == tuple(sorted(found, key=lambda s: -s.own))
    assert len(profiler.functions(in_thread(loop_thread), limit=1)) == 1


def test_short_iterations_share_a_tag_and_a_long_one_ends_it(profiler: Profiler) -> None:
    """Within `span`, iterations keep one tag; the iteration after a long one gets a new tag."""

    def loop_thread() -> list[int]:
        tags = [profiler.begin_iteration() for _ in range(50)]
        time.sleep(0.02)
        tags.append(profiler.begin_iteration())
        return tags

    tags = in_thread(loop_thread)
    assert len(set(tags[:50])) <= 2  # one, or two if a span ended mid-way
    assert tags[-1] not in tags[:50]


def test_each_thread_has_its_own_tags(profiler: Profiler) -> None:
    """Two loop threads never share a tag, and their calls do not mix."""
    barrier = threading.Barrier(2)

    def parse() -> int:
        tag = profiler.begin_iteration()
        barrier.wait()
        json.loads(BLOB)
        profiler.begin_iteration()
        return tag

    def sleep() -> int:
        tag = profiler.begin_iteration()
        barrier.wait()
        time.sleep(0.05)
        profiler.begin_iteration()
        return tag

    results: dict[str, int] = {}
    threads = [threading.Thread(target=lambda f=f: results.__setitem__(f.__name__, f()))
               for f in (parse, sleep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["parse"] != results["sleep"]
    assert "loads" in names(profiler.functions(results["parse"]))
    assert "loads" not in names(profiler.functions(results["sleep"]))
    assert "time.sleep" in names(profiler.functions(results["sleep"]))


def test_a_long_iteration_survives_the_clearing_of_results() -> None:
    """When yappi's results are cleared to bound its tags, long iterations are kept first."""
    profiler = Profiler(span=0.001, keep_over=0.01, max_tags=4)
    profiler.start()
    try:
        def loop_thread() -> int:
            tag = profiler.begin_iteration()
            json.loads(BLOB)
            for _ in range(20):  # five clears' worth of new tags
                profiler.begin_iteration()
                time.sleep(0.002)
            return tag

        tag = in_thread(loop_thread)
        assert profiler._cleared_below > tag  # its results were cleared from yappi
        assert "loads" in names(profiler.functions(tag))
    finally:
        profiler.stop()


def test_the_current_iteration_is_kept_at_stop(profiler: Profiler) -> None:
    """A block the watchdog finishes after stop() still has its functions."""

    def loop_thread() -> int:
        tag = profiler.begin_iteration()
        json.loads(BLOB)
        return tag

    tag = in_thread(loop_thread)
    profiler.stop()
    assert "loads" in names(profiler.functions(tag))


def test_duty_cycle_switches_yappi_off_and_on() -> None:
    """duty < 1 profiles only part of each window; off, iterations get tag 0 and no functions."""
    profiler = Profiler(duty=0.5, window=0.2)
    profiler.start()
    try:
        assert yappi.is_running() and profiler.begin_iteration() > 0
        deadline = time.monotonic() + 2
        while yappi.is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not yappi.is_running()
        assert profiler.begin_iteration() == 0
        assert profiler.functions(0) == ()
        while not yappi.is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert yappi.is_running()
        assert [t for t in threading.enumerate() if t.name == "loopwatch-profiler"]
    finally:
        profiler.stop()


def test_hold_keeps_yappi_on_past_the_active_part() -> None:
    """hold() (called while a block is sampled) postpones the end of the active part."""
    profiler = Profiler(duty=0.5, window=0.2)
    profiler.start()
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.25:
            profiler.hold(0.1)
            assert yappi.is_running()
            time.sleep(0.01)
        deadline = time.monotonic() + 1
        while yappi.is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not yappi.is_running()
    finally:
        profiler.stop()


def test_start_is_idempotent_and_restores_the_clock(profiler: Profiler) -> None:
    """start() twice is harmless; yappi runs on the wall clock while profiling."""
    profiler.start()
    assert profiler.running and yappi.is_running()
    assert yappi.get_clock_type() == "wall"


def test_stop_restores_a_previous_clock_type() -> None:
    """The clock type someone set before start() is back after stop()."""
    before = yappi.get_clock_type()
    yappi.set_clock_type("cpu")
    try:
        profiler = Profiler()
        profiler.start()
        profiler.stop()
        assert yappi.get_clock_type() == "cpu"
    finally:
        yappi.set_clock_type(before)


def test_refuses_when_yappi_is_busy_elsewhere() -> None:
    """If someone else runs yappi, or left results, profiling stays off and says why."""
    yappi.start()
    try:
        profiler = Profiler()
        profiler.start()
        assert not profiler.running
        assert profiler.problem and "already running" in profiler.problem
        assert profiler.begin_iteration() == 0
        profiler.stop()  # harmless
        assert yappi.is_running()  # the other user's profiler was left alone
    finally:
        yappi.stop()
    try:
        profiler = Profiler()
        profiler.start()
        assert not profiler.running
        assert profiler.problem and "results" in profiler.problem
    finally:
        yappi.clear_stats()


def test_only_one_profiler_runs_at_a_time(profiler: Profiler) -> None:
    """A second Profiler refuses while the first runs."""
    other = Profiler()
    other.start()
    assert not other.running and other.problem


def test_bad_settings_fail_fast() -> None:
    """duty and window are checked when the Profiler is made."""
    with pytest.raises(ValueError, match="duty"):
        Profiler(duty=0)
    with pytest.raises(ValueError, match="window"):
        Profiler(window=-1)


def test_aggregate_sums_functions_over_blocks() -> None:
    """aggregate() adds up own/total/calls per function, heaviest own time first."""
    loads = FunctionStat("loads", "json/__init__.py", 299, 0.0, 0.2, 1)
    decode = FunctionStat("JSONDecoder.raw_decode", "json/decoder.py", 343, 0.2, 0.2, 1)
    sleep = FunctionStat("time.sleep", "time", 0, 0.3, 0.3, 2)

    def with_functions(*functions: FunctionStat) -> Block:
        return Block(id=0, loop="l", started=0.0, duration=0.3, cpu_ratio=None,
                     kind="unknown", frames=(), site=None, function=None,
                     functions=functions)

    total = Profiler.aggregate([with_functions(loads, decode), with_functions(loads, decode),
                                with_functions(sleep), with_functions()])
    assert [(f.name, f.calls) for f in total] == [
        ("JSONDecoder.raw_decode", 2), ("time.sleep", 2), ("loads", 2)]
    assert total[0].own == pytest.approx(0.4)
    assert Profiler.aggregate([with_functions(loads, decode, sleep)], limit=1) == (sleep,)
