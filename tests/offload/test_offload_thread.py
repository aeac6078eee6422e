"""offload("thread") and thread-pool executors: where calls run, context, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import offload_workload as w
import pytest

from loopwatch.offload import offload

WAIT = 30  # seconds; generous: only reached when something is broken


@offload("thread")
def thread_where() -> tuple[int, str]:
    return w.where()


@offload("thread")
async def async_thread_where() -> tuple[int, str, bool]:
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    return os.getpid(), threading.current_thread().name, loop.is_running()


@pytest.mark.asyncio
async def test_sync_function_runs_in_a_pool_thread() -> None:
    """A plain function runs in a loopwatch-offload thread of this process, not on the loop."""
    pid, thread = await thread_where()
    assert pid == os.getpid()
    assert thread.startswith("loopwatch-offload")


@pytest.mark.asyncio
async def test_async_function_runs_on_its_own_loop_in_a_thread() -> None:
    """An async def function runs on a fresh event loop inside a pool thread."""
    main_loop = asyncio.get_running_loop()
    pid, thread, running = await async_thread_where()
    assert (pid, running) == (os.getpid(), True)
    assert thread.startswith("loopwatch-offload")
    assert asyncio.get_running_loop() is main_loop


@pytest.mark.asyncio
async def test_methods_classmethods_and_staticmethods() -> None:
    """Every kind of method gets the right self/cls and arguments."""
    counter = w.Counter(10)
    assert await counter.aplus(5) == 15
    assert await w.Counter.aplus(counter, 6) == 16
    assert await counter.thrice(4) == 12
    assert await w.Counter.thrice(5) == 15


@pytest.mark.asyncio
async def test_context_variables_are_copied_into_the_thread() -> None:
    """The caller's context variables are visible in the thread; changes there stay there."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @offload("thread")
    def read_and_change() -> str:
        seen = var.get()
        var.set("changed in thread")
        return seen

    @offload("thread")
    async def aread() -> str:
        return var.get()

    var.set("request-42")
    assert await read_and_change() == "request-42"
    assert await aread() == "request-42"
    assert var.get() == "request-42"


@pytest.mark.asyncio
async def test_keyword_arguments_and_exceptions_pass_through() -> None:
    """kwargs reach the function; its exception reaches the caller unchanged."""

    @offload("thread")
    def divide(a: int, *, by: int) -> float:
        return a / by

    assert await divide(6, by=3) == 2
    with pytest.raises(ZeroDivisionError):
        await divide(1, by=0)


@pytest.mark.asyncio
async def test_cancelling_reaches_an_async_function_in_a_thread() -> None:
    """Cancelling the awaiting task cancels the coroutine running on the thread's loop."""
    started = threading.Event()
    cancelled = threading.Event()

    @offload("thread")
    async def wait_forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(wait_forever())
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, started.wait, WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await loop.run_in_executor(None, cancelled.wait, WAIT)


@pytest.mark.asyncio
async def test_cancelling_before_it_starts_means_it_never_runs() -> None:
    """A queued call whose caller gave up is never run."""
    release = threading.Event()
    ran: list[str] = []
    executor = ThreadPoolExecutor(1, thread_name_prefix="test-single")

    @offload(executor)
    def block() -> None:
        release.wait(WAIT)

    @offload(executor)
    def record() -> None:
        ran.append("ran")

    try:
        first = asyncio.ensure_future(block())
        second = asyncio.ensure_future(record())
        await asyncio.sleep(0)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        release.set()
        await first
        await record()
        assert ran == ["ran"]
    finally:
        release.set()
        executor.shutdown(wait=True)


@pytest.mark.asyncio
async def test_max_workers_bounds_the_threads() -> None:
    """offload("thread", max_workers=1) runs calls one at a time in a single thread."""

    @offload("thread", max_workers=1)
    def name() -> str:
        return threading.current_thread().name

    names = set(await asyncio.gather(*(name() for _ in range(20))))
    assert len(names) == 1


@pytest.mark.asyncio
async def test_any_thread_pool_executor() -> None:
    """A ThreadPoolExecutor target runs calls in its own threads, context copied."""
    var: contextvars.ContextVar[int] = contextvars.ContextVar("n", default=0)
    with ThreadPoolExecutor(2, thread_name_prefix="mine") as executor:

        @offload(executor)
        def where_and_var() -> tuple[str, int]:
            return threading.current_thread().name, var.get()

        @offload(executor)
        async def async_add(a: int, b: int) -> int:
            await asyncio.sleep(0)
            return a + b

        var.set(7)
        thread, seen = await where_and_var()
        assert thread.startswith("mine") and seen == 7
        assert await async_add(2, 3) == 5
