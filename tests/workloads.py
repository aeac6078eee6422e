"""Blocking calls of a known length, calibrated on this machine, and helpers to check blocks."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType

from loopwatch.demo import unsynced_backlog

BLOCK = 0.15
"""How long each deliberate block lasts, in seconds."""
THRESHOLD = 0.05

#: a step of compute_in_steps (seconds)
STEP = 0.002


async def compute_in_steps(seconds: float, each_step: Callable[[], object] = lambda: None) -> None:
    """Compute all the time, in 2 ms steps, letting go of the GIL between them only for
    moments (in select): whenever the machine stops running the loop's thread, it is
    inside an iteration."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        step = time.monotonic() + STEP
        while time.monotonic() < step:
            pass
        await asyncio.sleep(0)
        each_step()


COMPUTE_IN_STEPS = (
    f"import asyncio, time\nfrom collections.abc import Callable\nSTEP = {STEP}\n\n"
    + inspect.getsource(compute_in_steps)
)
"""compute_in_steps as source, for a program run in its own process."""


@dataclass
class Stopwatch:
    """Measures, in the loop thread, how long the blocking statement took."""

    elapsed: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.elapsed = time.perf_counter() - self._start


def marked(path: str, tag: str) -> str:
    """``file:line`` of the line ending in ``# block: <tag>`` in ``path``."""
    lines = Path(path).read_text().splitlines()
    hits = [n for n, text in enumerate(lines, 1) if text.rstrip().endswith(f"# block: {tag}")]
    assert len(hits) == 1, f"marker {tag!r} must appear once in {path}"
    return f"{path}:{hits[0]}"


def _time(fn: object, *args: object) -> float:
    """CPU seconds ``fn(*args)`` takes in this thread.

    Not wall time: on a busy machine that counts the time spent waiting for a
    CPU too, and a workload calibrated then would come out short (under the
    threshold) once the machine is quiet. Each of these computes in the calling
    thread, with the GIL or without.
    """
    start = time.thread_time()
    fn(*args)  # type: ignore[operator]
    return time.thread_time() - start


@cache
def pbkdf2_rounds(seconds: float = BLOCK) -> int:
    """Iterations of pbkdf2_hmac (releases the GIL) that take about ``seconds``."""
    sample = 20_000
    per = min(_time(hashlib.pbkdf2_hmac, "sha256", b"pw", b"salt", sample) for _ in range(3))
    return max(1, int(sample * seconds / per))


@cache
def json_blob(seconds: float = BLOCK) -> str:
    """A JSON document whose json.loads (holds the GIL) takes about ``seconds``."""
    piece = json.dumps([{"id": i, "name": "x" * 12, "tags": [1, 2, 3]} for i in range(5000)])
    per = min(_time(json.loads, piece) for _ in range(3))
    copies = max(1, round(seconds / per))
    return "[" + ",".join([piece[1:-1]] * copies) + "]"


CATASTROPHIC = re.compile(r"(a+)+$")


@cache
def regex_subject(seconds: float = BLOCK) -> str:
    """A string on which CATASTROPHIC.match backtracks (holding the GIL) for about ``seconds``."""
    n = 16
    while _time(CATASTROPHIC.match, "a" * n + "b") < seconds / 2:
        n += 1
    return "a" * n + "b"


@cache
def list_size(seconds: float = BLOCK) -> int:
    """n such that ``sum([i * i for i in range(n)])`` takes about ``seconds``."""
    sample = 200_000
    per = min(_time(lambda: sum([i * i for i in range(sample)])) for _ in range(3))
    return max(1, int(sample * seconds / per))


def dirty_backlog(path: str, seconds: float = BLOCK * 1.5) -> None:
    """Write unsynced data to ``path`` so that fsync on it waits for about ``seconds``."""
    unsynced_backlog(path, seconds)
