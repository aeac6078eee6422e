"""loopwatch never breaks the program it watches: injected internal failures, bad sinks.

A failure inside loopwatch while watching one loop stops watching that loop
only (logged once, noted in the report); callbacks and sinks run in their own
thread, so a slow or failing one stalls neither the loop nor the watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import pytest
from workloads import BLOCK, THRESHOLD

import loopwatch
from loopwatch import Block, Sink
from loopwatch._core import dispatch as dispatch_module
from loopwatch.watchdog import WATCHDOG


async def _block_once(seconds: float = BLOCK) -> None:
    await asyncio.sleep(0)
    time.sleep(seconds)
    await asyncio.sleep(0)


def _probe_of_running_loop() -> Any:
    return WATCHDOG._loops.get(asyncio.get_running_loop())


def _run_in_thread(coro_fn: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro_fn())))
    thread.start()
    return thread, result


def _loopwatch_warnings(caplog: Any, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


# -- failures inside loopwatch --------------------------------------------------------


def test_watchdog_failure_on_one_loop_leaves_the_others_watched(caplog: Any) -> None:
    """The watchdog fails every time it looks at loop A: A is dropped, B is still watched."""
    broken = threading.Event()

    async def loop_a() -> str:
        probe = _probe_of_running_loop()

        def fails(*args: Any) -> float:
            raise RuntimeError("injected: probe cannot read the loop")

        probe.busy_since = fails
        broken.set()
        for _ in range(20):  # the program keeps running normally
            await asyncio.sleep(0.01)
        await _block_once()  # not reported: A is no longer watched
        return "a done"

    async def loop_b() -> str:
        broken.wait(5)
        await asyncio.sleep(0.3)  # let the watchdog give up on A first
        await _block_once()
        return "b done"

    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD
    ) as session:
        (thread_a, result_a), (thread_b, result_b) = (
            _run_in_thread(loop_a), _run_in_thread(loop_b)
        )
        thread_a.join()
        thread_b.join()
    report = session.report()
    assert result_a == ["a done"] and result_b == ["b done"]
    assert len(report.blocks) == 1
    assert report.blocks[0].site is not None and "test_containment.py" in report.blocks[0].site
    warnings = _loopwatch_warnings(caplog, "stopped watching")
    assert len(warnings) == 1 and "internal error in the watchdog" in warnings[0]
    assert any("stopped watching" in event for event in report.events)


def test_failure_in_the_loop_threads_hook_does_not_reach_the_loop(caplog: Any) -> None:
    """The select hook fails in the loop's own thread: the loop runs on, undisturbed."""

    class Exploding(deque):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            raise RuntimeError("injected: cannot record the iteration's end")

    async def main() -> list[int]:
        probe = _probe_of_running_loop()
        probe.ended = Exploding()
        await _block_once()  # the watchdog arms the end hook; the hook fails
        # The loop still selects, schedules and runs callbacks.
        results = await asyncio.gather(*(asyncio.sleep(0.01, result=i) for i in range(5)))
        return list(results)

    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD
    ) as session:
        assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    warnings = _loopwatch_warnings(caplog, "stopped watching")
    assert len(warnings) == 1 and "the select hook" in warnings[0]
    assert any("stopped watching" in event for event in session.report().events)


def test_failing_session_does_not_starve_other_sessions(caplog: Any) -> None:
    """One session that cannot record blocks: logged once; the other session gets them all."""
    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD
    ) as healthy, loopwatch.watch(threshold=THRESHOLD) as broken:

        def refuse(block: Block) -> None:
            raise RuntimeError("injected: session cannot store a block")

        broken.receive_block = refuse  # type: ignore[method-assign]
        asyncio.run(_block_once())
        asyncio.run(_block_once())
    assert len(healthy.report().blocks) == 2
    assert _loopwatch_warnings(caplog, "failed to record a block") == [
        "a loopwatch session failed to record a block"
    ]


# -- callbacks and sinks ------------------------------------------------------------------


def test_hanging_on_block_stalls_neither_the_loop_nor_the_watchdog() -> None:
    """While on_block hangs, the program runs to its end and later blocks are still found."""
    release = threading.Event()
    called: list[Block] = []

    def hangs(block: Block) -> None:
        called.append(block)
        release.wait(30)

    async def main() -> None:
        for _ in range(3):
            await _block_once()

    with loopwatch.watch(threshold=THRESHOLD, on_block=hangs) as session:
        asyncio.run(main())  # returns although the first callback is still waiting
        assert len(session.blocks) == 3  # the watchdog kept finding blocks
        assert len(called) == 1  # the others wait their turn in the sinks thread
        release.set()
    assert len(called) == 3  # leaving watch() let them all run


def test_hung_on_block_does_not_hang_watch_exit(monkeypatch: Any, caplog: Any) -> None:
    """A callback that never returns: watch() gives up waiting for it and says so."""
    monkeypatch.setattr(dispatch_module, "DRAIN_TIMEOUT", 0.3)
    release = threading.Event()
    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD, on_block=lambda block: release.wait(30)
    ):
        asyncio.run(_block_once())
    try:
        assert _loopwatch_warnings(caplog, "still running after")
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name == "loopwatch-sinks":
                thread.join(10)


def test_sinks_queue_is_bounded(monkeypatch: Any) -> None:
    """Sinks far behind: deliveries beyond the bound are dropped, and the report says so."""
    monkeypatch.setattr(dispatch_module, "MAX_PENDING", 1)
    release = threading.Event()
    with loopwatch.watch(threshold=THRESHOLD, on_block=lambda block: release.wait(30)) as session:
        for _ in range(3):
            asyncio.run(_block_once())
        session.blocks  # noqa: B018 - makes the watchdog finish them now
        release.set()
    report = session.report()
    assert len(report.blocks) == 3  # the report itself is complete
    assert any("dropped" in event for event in report.events)


class Recorder(Sink):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.thread_names: set[str] = set()
        self.live: tuple[Any, ...] = ()

    def open(self, session: loopwatch.Session) -> None:
        self.session = session
        self.calls.append(("open",))

    def block(self, block: Block) -> None:
        self.thread_names.add(threading.current_thread().name)
        self.calls.append(("block", block.site))
        self.live = self.session.live_loops()

    def slow_iteration(self, loop: str, duration: float, site: str | None, blocked: bool) -> None:
        self.calls.append(("slow", loop, blocked))

    def close(self) -> None:
        self.calls.append(("close",))


def test_sink_receives_blocks_and_slow_iterations_in_its_own_thread() -> None:
    """A Sink gets open, each block (as a block and a slow iteration), cuts, then close."""
    recorder = Recorder()

    async def main() -> None:
        await _block_once()
        for _ in range(10):  # cuts: over site_threshold (5 ms), under the threshold
            await asyncio.sleep(0)
            time.sleep(0.02)

    with loopwatch.watch(threshold=THRESHOLD, sinks=[recorder]) as session:
        asyncio.run(main())
    (block,) = session.report().blocks
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "open" and kinds[-1] == "close"
    assert ("block", block.site) in recorder.calls
    assert ("slow", block.loop, True) in recorder.calls
    cuts = [c for c in recorder.calls if c[0] == "slow" and not c[2]]
    assert cuts and all(c[1] == block.loop for c in cuts)
    assert recorder.thread_names == {"loopwatch-sinks"}
    assert [stats.loop for stats in recorder.live] == [block.loop]  # live while running


def test_a_sink_shared_by_nested_sessions_gets_each_finding_once() -> None:
    recorder = Recorder()

    async def main() -> None:
        await _block_once()
        for _ in range(5):  # cuts
            await asyncio.sleep(0)
            time.sleep(0.02)

    with loopwatch.watch(threshold=THRESHOLD, sinks=[recorder]), loopwatch.watch(
        threshold=THRESHOLD, sinks=[recorder]
    ) as inner:
        asyncio.run(main())
    (block,) = inner.report().blocks
    assert [c for c in recorder.calls if c[0] == "block"] == [("block", block.site)]
    blocked = [c for c in recorder.calls if c[0] == "slow" and c[2]]
    assert len(blocked) == 1
    cuts = [c for c in recorder.calls if c[0] == "slow" and not c[2]]
    assert 0 < len(cuts) <= 5  # not twice each


def test_failing_sink_is_logged_once_and_keeps_being_called(caplog: Any) -> None:
    class Broken(Sink):
        calls = 0

        def block(self, block: Block) -> None:
            Broken.calls += 1
            raise RuntimeError("injected: metrics backend down")

    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD, sinks=[Broken()]
    ):
        asyncio.run(_block_once())
        asyncio.run(_block_once())
    assert Broken.calls == 2
    assert len(_loopwatch_warnings(caplog, "Broken.block raised")) == 1


def test_bad_sinks_value_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"invalid loopwatch sinks .* loopwatch.Sink"):
        loopwatch.watch(sinks=[print])
