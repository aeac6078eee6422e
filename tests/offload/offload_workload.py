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


_started: dict[str, float] = {}


@offload("process", max_workers=1)
async def wait_forever(tag: str, marker: str) -> None:
    """Write a marker file when cancelled, so the test can see the cancellation arrived."""
    try:
        with open(marker + ".started", "w"):
            pass
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        with open(marker, "w") as out:
            out.write(tag)
        raise


@offload("process", max_workers=1)
def sync_sleep_then_mark(seconds: float, marker: str) -> str:
    with open(marker + ".started", "w"):
        pass
    time.sleep(seconds)
    with open(marker, "w") as out:
        out.write("finished")
    return "done"


def spin(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds``."""
    deadline = time.thread_time() + seconds
    n = 0
    while time.thread_time() < deadline:
        n += 1
    return n


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
