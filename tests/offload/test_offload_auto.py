"""offload("auto"): inline until a watch session sees the function block, then off the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import offload_workload as w
import pytest

import loopwatch
from loopwatch.offload import offload
from loopwatch.session import Session

WAIT = 30.0  # seconds; generous: only reached when something is broken


async def decided(session: Session, name: str) -> str:
    """The report event announcing the decision about ``name``, once the watchdog made it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        # The block ended with the previous iteration; report() finishes it now.
        for event in session.report().events:
            if f"{name}() blocked the event loop" in event:
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"no decision about {name}() in {session.report().events}")


def run_watched(main: Callable[[Session], Awaitable[Any]]) -> tuple[Any, loopwatch.Report]:
    """Run main(session) with asyncio.run inside a real watch session; (result, report)."""
    with loopwatch.watch(threshold=0.05) as session:
        result = asyncio.run(main(session))
    return result, session.report()


def test_runs_inline_until_it_blocks() -> None:
    """Before any block, calls run inline on the loop's own thread."""

    async def main(session: Session) -> tuple[int, str]:
        return await w.auto_never_blocks()

    (pid, thread), report = run_watched(main)
    assert report.events == ()
    assert (pid, thread) == (os.getpid(), threading.current_thread().name)


def test_cpu_bound_function_moves_to_a_worker_process(caplog: pytest.LogCaptureFixture) -> None:
    """A function that blocked the loop computing runs in a worker process afterwards."""
    caplog.set_level(logging.WARNING, logger="loopwatch")

    async def main(session: Session) -> tuple[tuple[int, str], tuple[int, str], str]:
        first = await w.auto_spin(0.25)
        await asyncio.sleep(0)  # end the blocking iteration
        event = await decided(session, "auto_spin")
        second = await w.auto_spin(0.001)
        return first, second, event

    (first, second, event), report = run_watched(main)
    assert first[0] == os.getpid()
    assert "later calls run in a worker process" in event, event
    assert "offload_workload.auto_spin() blocked the event loop for" in event
    assert "mostly computing" in event
    assert second[0] != os.getpid()
    assert event in report.events
    decisions = [r for r in caplog.records if "auto_spin() blocked the event loop" in r.message]
    assert len(decisions) == 1
    assert decisions[0].name == "loopwatch"


def test_waiting_function_moves_to_a_thread() -> None:
    """A function that blocked the loop sleeping runs in a pool thread afterwards."""

    async def main(session: Session) -> tuple[tuple[int, str], tuple[int, str], str]:
        first = await w.auto_sleep(0.25)
        await asyncio.sleep(0)
        event = await decided(session, "auto_sleep")
        second = await w.auto_sleep(0.001)
        return first, second, event

    (first, second, event), _ = run_watched(main)
    assert first[1] == threading.current_thread().name
    assert "later calls run in a thread" in event, event
    assert "mostly waiting" in event
    assert second[0] == os.getpid()
    assert second[1].startswith("loopwatch-offload")


def test_two_functions_blocking_in_one_iteration_are_judged_each_on_its_own() -> None:
    """gather() of a computing and a sleeping function is one block with a mixed cpu_ratio:
    each function is judged by its own timed calls, and moves where it belongs."""

    async def main(session: Session) -> tuple[tuple[int, str], tuple[int, str], str, str]:
        await asyncio.gather(w.auto_pair_cpu(0.25), w.auto_pair_wait(0.25))
        await asyncio.sleep(0)
        cpu_event = await decided(session, "auto_pair_cpu")
        wait_event = await decided(session, "auto_pair_wait")
        cpu, waited = await asyncio.gather(w.auto_pair_cpu(0.001), w.auto_pair_wait(0.001))
        return cpu, waited, cpu_event, wait_event

    (cpu, waited, cpu_event, wait_event), report = run_watched(main)
    assert len(report.blocks) >= 1
    assert "later calls run in a worker process" in cpu_event, cpu_event
    assert "over its calls: mostly computing" in cpu_event
    assert cpu[0] != os.getpid()
    assert "later calls run in a thread" in wait_event, wait_event
    assert waited[1].startswith("loopwatch-offload")


@pytest.mark.parametrize("name", ["auto_sleep_in_a_row", "auto_async_sleep_in_a_row"])
def test_calls_in_a_row_move_after_the_first(name: str) -> None:
    """Four calls that never yield to the loop: the first runs inline and, being longer
    than the session's threshold, moves the other three at once (the loop could only
    report the block after the fourth)."""
    function = getattr(w, name)

    async def main(session: Session) -> list[tuple[int, str]]:
        return [await function(0.1) for _ in range(4)]

    places, report = run_watched(main)
    assert places[0] == (os.getpid(), threading.current_thread().name)
    assert [thread.startswith("loopwatch-offload") for _, thread in places[1:]] == [True] * 3
    (event,) = [e for e in report.events if f"{name}() blocked the event loop" in e]
    assert "later calls run in a thread" in event and "mostly waiting" in event, event
    assert "offload_workload.py:" in event  # where the function is


def test_async_function_that_computes_moves_to_a_worker_loop() -> None:
    """An async def function that blocked computing runs on a worker process's loop after."""

    async def main(session: Session) -> tuple[tuple[int, str], str]:
        await w.auto_async_spin(0.25)
        await asyncio.sleep(0)
        event = await decided(session, "auto_async_spin")
        return await w.auto_async_spin(0.001), event

    ((pid, thread), event), _ = run_watched(main)
    assert "later calls run in a worker process" in event, event
    assert pid != os.getpid() and thread == "loopwatch-worker-loop"


def test_function_that_cannot_be_pickled_goes_to_a_thread() -> None:
    """A CPU-bound nested function cannot reach a worker process: it gets a thread, and why."""

    @offload
    def local_spin(seconds: float) -> str:
        w.spin(seconds)
        return threading.current_thread().name

    async def main(session: Session) -> tuple[str, str]:
        await local_spin(0.25)
        await asyncio.sleep(0)
        event = await decided(session, "test_function_that_cannot_be_pickled_goes_to_a_thread."
                                       "<locals>.local_spin")
        return await local_spin(0.001), event

    (thread, event), _ = run_watched(main)
    print(event)
    assert thread.startswith("loopwatch-offload")
    if "mostly computing" in event:
        assert "not a worker process" in event and "defined inside another function" in event


def test_unpicklable_argument_after_moving_to_a_process_falls_back_to_a_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """"auto" never breaks a call that worked inline: an argument a worker process cannot
    receive sends the call, and later ones, to a thread instead, saying so once."""
    caplog.set_level(logging.WARNING, logger="loopwatch")

    async def main(session: Session) -> tuple[tuple[int, str], tuple[int, str], str]:
        await w.auto_spin_with(0.25)
        await asyncio.sleep(0)
        event = await decided(session, "auto_spin_with")
        in_process = await w.auto_spin_with(0.001)
        in_thread = await w.auto_spin_with(0.001, callback=lambda: None)
        return in_process, in_thread, event

    (in_process, in_thread, event), report = run_watched(main)
    if "worker process" not in event:
        pytest.skip(f"the block did not measure as CPU-bound on this machine: {event}")
    assert in_process[0] != os.getpid()
    assert in_thread[0] == os.getpid() and in_thread[1].startswith("loopwatch-offload")
    fallback = [e for e in report.events if "now runs in a thread" in e]
    assert len(fallback) == 1
    assert "argument 'callback' of auto_spin_with() cannot be sent" in fallback[0]
    assert sum("now runs in a thread" in r.message for r in caplog.records) == 1
