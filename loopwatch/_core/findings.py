"""What the watchdog hands on for each block: one shape for every listener.

Sessions, the pytest plugin, sinks, ``on_block`` and auto-offload all hear of
a block through a :data:`Listener` called with a :class:`Found`: the block and
its iteration's start and end on the loop's clock (``time.monotonic()``), so
that no listener has to work them back out of the block's wall-clock fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loopwatch.model import Block


@dataclass(frozen=True)
class Found:
    """A block as the watchdog found it."""

    block: Block
    #: when the blocking iteration began, on the loop's clock (``time.monotonic()``)
    start: float
    #: when it ended, on the same clock
    end: float
    #: the OpenTelemetry span active in the blocked task, if any (see loopwatch.traces)
    span: Any = field(default=None, compare=False, repr=False)


#: Called (in the watchdog's thread, so it must be quick) for each block found.
Listener = Callable[[Found], None]
