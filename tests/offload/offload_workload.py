"""Functions the offload tests run in worker processes: they must be importable there."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time

from loopwatch.offload import offload

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def where() -> tuple[int, str]:
    """(pid, thread name) of the caller."""
    return os.getpid(), threading.current_thread().name


def add(a: int, b: int = 0) -> int:
    return a + b


async def async_add(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


@offload("process")
def square(x: int) -> int:
    """Square x in a worker process."""
    return x * x


@offload("process")
async def async_where() -> tuple[int, str]:
    await asyncio.sleep(0)
    return where()


@offload("process")
def process_where() -> tuple[int, str]:
    return where()


class ParseError(ValueError):
    pass


@offload("process")
def fail(message: str) -> None:
    raise ParseError(message)


@offload("process")
async def async_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise ParseError(message)


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


@offload("process")
def fail_oddly() -> None:
    raise NeedsTwoArgs("x", "y")


@offload("process")
def parse(data: bytes, cb: object = None) -> int:
    return len(data)


@offload("process")
def make_generator(n: int) -> object:
    return (i for i in range(n))


@offload("process")
def crash(code: int) -> None:
    os._exit(code)


_gate_count = 0
_gate: asyncio.Event | None = None


@offload("process", max_workers=1)
async def rendezvous(n: int) -> tuple[int, int]:
    """Wait until n calls are inside this function at once (in this process)."""
    global _gate_count, _gate
    if _gate is None:
        _gate = asyncio.Event()
    _gate_count += 1
    if _gate_count >= n:
        _gate.set()
    await _gate.wait()
    return os.getpid(), _gate_count


def _wait_for(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def _touch(path: str, text: str = "") -> None:
    with open(path, "w") as out:
        out.write(text)


@offload("process", max_workers=1)
async def wait_forever(marker: str) -> None:
    """Write ``marker.started``, then wait; write ``marker`` with "cancelled" when cancelled."""
    _touch(marker + ".started")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _touch(marker, "cancelled")
        raise


@offload("process", max_workers=1)
def gated(gate: str, marker: str) -> str:
    """Write ``marker.started``, wait for the file ``gate``, write ``marker``; a plain function."""
    _touch(marker + ".started")
    _wait_for(gate)
    _touch(marker, "finished")
    return "finished"


@offload("process", max_workers=1)
def crash_alone(code: int) -> None:
    os._exit(code)


@offload("process", max_workers=1)
def pid_alone() -> int:
    return os.getpid()


@offload("process", max_workers=2)
def hold(gate: str) -> int:
    """Wait for the file ``gate``; return this worker's pid."""
    _wait_for(gate)
    return os.getpid()


@offload("process", max_workers=2)
def crash_beside(code: int) -> None:
    os._exit(code)


def spin(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds``."""
    deadline = time.thread_time() + seconds
    n = 0
    while time.thread_time() < deadline:
        n += 1
    return n


@offload
def auto_spin(seconds: float) -> tuple[int, str]:
    """CPU-bound: "auto" should move it to a worker process once it blocked the loop."""
    spin(seconds)
    return where()


@offload
def auto_sleep(seconds: float) -> tuple[int, str]:
    """Waiting: "auto" should move it to a thread once it blocked the loop."""
    time.sleep(seconds)
    return where()


@offload
async def auto_async_spin(seconds: float) -> tuple[int, str]:
    spin(seconds)
    await asyncio.sleep(0)
    return where()


@offload
def auto_spin_with(seconds: float, callback: object = None) -> tuple[int, str]:
    spin(seconds)
    return where()


@offload
def auto_pair_cpu(seconds: float) -> tuple[int, str]:
    spin(seconds)
    return where()


@offload
def auto_pair_wait(seconds: float) -> tuple[int, str]:
    time.sleep(seconds)
    return where()


@offload
def auto_never_blocks() -> tuple[int, str]:
    return where()


@offload
def auto_sleep_in_a_row(seconds: float) -> tuple[int, str]:
    """Called several times in one loop iteration: it must move before the iteration ends."""
    time.sleep(seconds)
    return where()


@offload
async def auto_async_sleep_in_a_row(seconds: float) -> tuple[int, str]:
    time.sleep(seconds)  # blocks: no await before it
    return where()


class Counter:
    """Methods of every kind, offloaded."""

    def __init__(self, start: int) -> None:
        self.start = start

    @offload("process")
    def plus(self, n: int) -> int:
        return self.start + n

    @offload("thread")
    async def aplus(self, n: int) -> int:
        await asyncio.sleep(0)
        return self.start + n

    @classmethod
    @offload("process")
    def make(cls, start: int) -> tuple[str, int]:
        return cls.__name__, start

    @offload("process")
    @classmethod
    def make2(cls, start: int) -> tuple[str, int]:
        return cls.__name__, start

    @staticmethod
    @offload("process")
    def twice(n: int) -> int:
        return 2 * n

    @offload("thread")
    @staticmethod
    def thrice(n: int) -> int:
        return 3 * n


@offload("thread")
def add_in_thread() -> tuple[int, str]:
    return where()


@offload("process")
def echo_size(data: bytes) -> tuple[int, bytes]:
    """The size of data, and data reversed (large payloads both ways)."""
    return len(data), data[::-1]
