"""Precise mode: time every callback and task step (``asyncio.events.Handle._run``).

Each loop's probe keeps the slowest callback of the current iteration, so a
block can name the callback or the task step that took the time. It costs a
little on every callback, so it is opt-in (``precise=True``); the overhead
benchmark measures it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from loopwatch.probe import Probe

_HANDLE = asyncio.events.Handle
_ORIGINAL_RUN = _HANDLE.__dict__["_run"]
_installed = False


def install(probes: Mapping[Any, Probe]) -> None:
    """Time every callback; each reports to its loop's probe in ``probes`` (loop -> probe).

    ``probes`` is the watchdog's own map, read at every callback: it must stay
    the same object while installed.
    """
    global _installed
    if _installed:
        return
    original = _ORIGINAL_RUN
    clock = time.monotonic

    # A plain closure, not wrapt: this runs for every callback.
    def _run(handle: Any) -> None:
        began = clock()
        try:
            original(handle)
        finally:
            took = clock() - began
            probe = probes.get(handle._loop)
            if probe is not None:
                slowest = probe.slowest
                if slowest is None or took > slowest[0]:
                    probe.slowest = (took, handle)

    _run.__loopwatch__ = True  # type: ignore[attr-defined]
    _HANDLE._run = _run  # type: ignore[method-assign,assignment]
    _installed = True


def remove(probes: Iterable[Probe] = ()) -> None:
    """Stop timing callbacks; ``probes`` forget the slowest one they were told of."""
    global _installed
    if not _installed:
        return
    _installed = False
    if getattr(_HANDLE.__dict__.get("_run"), "__loopwatch__", False):
        _HANDLE._run = _ORIGINAL_RUN  # type: ignore[method-assign]
    for probe in probes:
        probe.slowest = None
