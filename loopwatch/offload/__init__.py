"""Move work off the event loop: ``@offload`` to a thread, a process, any executor, or "auto".

>>> import asyncio
>>> from loopwatch.offload import offload
>>> @offload("thread")
... def add(a: int, b: int) -> int:
...     return a + b
>>> asyncio.run(add(2, 3))
5
"""

from __future__ import annotations

from loopwatch.offload._decorator import OffloadDecorator, offload
from loopwatch.offload._pools import shutdown
from loopwatch.offload.errors import (
    OffloadError,
    RemoteError,
    RemoteTraceback,
    UnpicklableError,
    WorkerCrashedError,
)

__all__ = [
    "OffloadDecorator",
    "OffloadError",
    "RemoteError",
    "RemoteTraceback",
    "UnpicklableError",
    "WorkerCrashedError",
    "offload",
    "shutdown",
]
