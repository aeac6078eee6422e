"""The framing spoken between the parent and its worker processes over a socket pair.

A frame is ``length (8 bytes) | kind (1 byte) | call id (8 bytes) | body``,
where ``length`` counts everything after itself. Kind and id are read without
unpickling, so a worker can route a call (or report that its body could not
be unpickled) before touching the body.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!QBQ")
_ID_AND_KIND = HEADER.size - 8

# parent -> worker
CALL_SYNC = 1
"""body: pickle((function spec bytes, args, kwargs)); runs in the worker's main thread."""
CALL_ASYNC = 2
"""body: as CALL_SYNC; runs as a task on the worker's event loop."""
CANCEL = 3
"""no body."""

# worker -> parent
HELLO = 10
"""body: pickle(pid); the worker's loop is up."""
RESULT = 11
"""body: pickle(value)."""
ERROR = 12
"""body: pickle((pickled exception or None, type name, message, traceback text))."""
CANCELLED = 13
"""no body: the call was cancelled (on request, or by itself)."""
FAILED = 14
"""body: pickle(exception from loopwatch.offload.errors): loopwatch could not run or return it."""


def frame(kind: int, call_id: int, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body) + _ID_AND_KIND, kind, call_id) + body


class FrameReader:
    """Reassembles frames from the chunks a stream socket returns."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        pos = 0
        size = len(buffer)
        while size - pos >= HEADER.size:
            length, kind, call_id = HEADER.unpack_from(buffer, pos)
            end = pos + 8 + length
            if end > size:
                break
            frames.append((kind, call_id, bytes(buffer[pos + HEADER.size : end])))
            pos = end
        if pos:
            del buffer[:pos]
        return frames
