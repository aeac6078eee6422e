"""Garbage collections, timed: a block can say how much of it was a GC pause."""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from typing import Any


class GcTimer:
    """Times garbage collections (``gc.callbacks``), so a block can say it was a GC pause."""

    #: Collections shorter than this are too short to matter to a block.
    MIN_PAUSE = 0.0005

    def __init__(self) -> None:
        #: (thread id, began, ended, generation) of the latest collections
        self.pauses: deque[tuple[int, float, float, int]] = deque(maxlen=2048)
        self._started: tuple[int, float] | None = None
        self._installed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # A collection runs in one thread holding the GIL: one slot is enough.
        if phase == "start":
            self._started = (threading.get_ident(), time.monotonic())
        elif self._started is not None:
            thread_id, began = self._started
            self._started = None
            ended = time.monotonic()
            if ended - began > self.MIN_PAUSE:
                self.pauses.append((thread_id, began, ended, int(info.get("generation", -1))))

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self)
            self._installed = True

    def remove(self) -> None:
        if self._installed:
            self._installed = False
            if self in gc.callbacks:
                gc.callbacks.remove(self)
            self.pauses.clear()

    def time_in(self, thread_id: int, start: float, end: float) -> float:
        """Seconds the collector ran in that thread between start and end."""
        return sum(
            max(0.0, min(end, stop) - max(start, began))
            for tid, began, stop, _ in list(self.pauses)
            if tid == thread_id and stop > start and began < end
        )

    def generation_in(self, thread_id: int, start: float, end: float) -> int | None:
        """The oldest generation collected in that thread between start and end, if any."""
        generations = [
            generation
            for tid, began, stop, generation in list(self.pauses)
            if tid == thread_id and stop > start and began < end and generation >= 0
        ]
        return max(generations, default=None)
