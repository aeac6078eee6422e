"""@offload("auto") in action: two functions block the loop once, then move off it.

    python examples/offload_auto.py

``checksum`` computes (CPU-bound): after loopwatch sees it block the loop, its
later calls run in a worker process. ``lookup`` sleeps like a blocking client
call (waiting): its later calls run in a thread. A heartbeat task shows how
late the loop was before and after.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import sys
import threading
import time

import loopwatch
from loopwatch.offload import offload


def here() -> str:
    if multiprocessing.parent_process() is not None:
        return f"worker process {os.getpid()}"
    thread = threading.current_thread()
    return "the loop" if thread is threading.main_thread() else f"thread {thread.name}"


@offload
def checksum(rounds: int) -> tuple[str, str]:
    """Pure-Python CPU work; returns a digest and where it ran."""
    digest = b""
    for i in range(rounds):
        digest = hashlib.sha256(digest + i.to_bytes(8, "little")).digest()
    return digest.hex()[:12], here()


@offload
def lookup(key: str) -> tuple[str, str]:
    """A blocking client call (simulated); returns a value and where it waited."""
    time.sleep(0.15)
    return key.upper(), here()


async def heartbeat(lags: list[float]) -> None:
    while True:
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - before - 0.01)


async def main() -> None:
    lags: list[float] = []
    beat = asyncio.create_task(heartbeat(lags))
    for round_ in range(1, 4):
        lags.clear()
        (digest, cpu_where), (value, io_where) = await asyncio.gather(
            checksum(300_000), lookup(f"key-{round_}")
        )
        await asyncio.sleep(0.05)  # let the watchdog finish the round's blocks
        print(
            f"round {round_}: checksum {digest} ran in {cpu_where}, lookup {value} in "
            f"{io_where}; worst loop lag {max(lags, default=0) * 1000:.0f} ms"
        )
    beat.cancel()


if __name__ == "__main__":  # worker processes import this file: start nothing at import
    # the decisions are logged on the "loopwatch" logger: show them among the prints
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="  [log] %(name)s: %(message)s")
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(main())
    events = session.report().events
    print(f"\nthe report's events list the same {len(events)} decisions, for when logging is off")
