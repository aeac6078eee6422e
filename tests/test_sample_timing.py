"""A sample is where the loop's thread was when the watchdog woke, never a line after.

The watchdog wakes, takes every thread's frames, then does its bookkeeping. Some
of that lets go of the GIL (reading /proc, a lock), and the loop's thread runs on
meanwhile: its frame objects then show a later line. Here the call "returns just
as the sample lands": the loop's thread is held at one line while the frames are
taken and released to the next one before the look, deterministically.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from workloads import marked

from loopwatch._core.gctimer import GcTimer
from loopwatch._core.looker import Looker
from loopwatch._core.settings import merge
from loopwatch.config import Config
from loopwatch.probe import SelectorProbe
from loopwatch.stacks import to_frames

HERE = __file__


class HeldLoop:
    """A loop in a thread whose one callback stops at two lines, each until released."""

    def __init__(self) -> None:
        self.at_first = threading.Event()
        self.release_first = threading.Event()
        self.at_second = threading.Event()
        self.release_second = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="held-loop")

    def _callback(self) -> None:
        self.at_first.set()
        self.release_first.wait(10)  # block: first
        self.at_second.set()
        self.release_second.wait(10)  # block: second
        self.loop.stop()

    def _run(self) -> None:
        self.loop.call_soon(self._callback)
        self.loop.run_forever()


@pytest.fixture
def held() -> Iterator[HeldLoop]:
    held = HeldLoop()
    held.thread.start()
    assert held.at_first.wait(10)
    try:
        yield held
    finally:
        held.release_first.set()
        held.release_second.set()
        held.thread.join(10)
        held.loop.close()


def innermost_line(stack: tuple[tuple[object, int], ...]) -> str:
    frames = [f for f in to_frames(stack) if f.file == HERE]  # type: ignore[arg-type]
    return frames[-1].location


def test_the_sample_is_the_line_running_when_the_watchdog_woke(held: HeldLoop) -> None:
    """Frames taken at the first line, the thread moved on before the look: the first line."""
    assert held.thread.ident is not None
    probe = SelectorProbe(held.loop, held.thread.ident, held.thread.native_id)
    looker = Looker(GcTimer(), lambda found: None, lambda cut, end: None)
    settings = merge([Config(threshold=0.05)])
    try:
        frames = sys._current_frames()
        stacks = looker.capture_busy([probe], frames)  # the moment the watchdog woke
        held.release_first.set()  # the call returns, the thread runs on...
        assert held.at_second.wait(10)  # ...to the next line, before the look
        # What the frame objects say by now: the later line (the bug this guards against).
        from loopwatch.stacks import capture

        assert innermost_line(capture(frames[held.thread.ident])) == marked(HERE, "second")
        now = time.monotonic() + 1.0  # an iteration far past the threshold
        assert looker.track(probe, frames[held.thread.ident], now, settings, flush=False,
                            stack=stacks[held.thread.ident])
        (sample,) = probe.wd.samples
        assert innermost_line(sample) == marked(HERE, "first")
    finally:
        probe.detach()
