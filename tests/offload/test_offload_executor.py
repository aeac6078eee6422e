"""offload(executor): ProcessPoolExecutor and dask.distributed run the same decorated code."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context

import offload_workload as w
import pytest

from loopwatch.offload import offload


@pytest.fixture
def process_executor() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
        yield executor


@pytest.mark.asyncio
async def test_process_pool_executor(process_executor: ProcessPoolExecutor) -> None:
    """Plain and async functions, kwargs, and exceptions go through a ProcessPoolExecutor."""
    where = offload(process_executor)(w.where)
    add = offload(process_executor)(w.add)
    async_add = offload(process_executor)(w.async_add)
    pid, _ = await where()
    assert pid != os.getpid()
    assert await add(2, b=3) == 5
    assert await async_add(4, b=5) == 9
    with pytest.raises(w.ParseError, match="boom"):
        await offload(process_executor)(w.fail.__wrapped__)("boom")


@pytest.mark.asyncio
async def test_process_pool_executor_reaches_functions_behind_our_wrapper(
    process_executor: ProcessPoolExecutor,
) -> None:
    """A function whose module name refers to an offload wrapper is still found by the worker."""
    square = offload(process_executor)(w.square.__wrapped__)
    assert await square(9) == 81


@pytest.fixture(scope="module")
def dask_executor() -> Iterator[Executor]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    )
    client = distributed.Client(cluster)
    try:
        # pure=False: every call runs, even with arguments equal to an earlier one
        yield client.get_executor(pure=False)
    finally:
        client.close()
        cluster.close()


@pytest.mark.asyncio
async def test_dask_executor(dask_executor: Executor) -> None:
    """The same decorator runs on a dask cluster: plain, async, methods, kwargs, errors."""
    add = offload(dask_executor)(w.add)
    async_add = offload(dask_executor)(w.async_add)

    @offload(dask_executor)
    def thread_name() -> str:
        return threading.current_thread().name

    class Scaler:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @offload(dask_executor)
        def scale(self, x: int) -> int:
            return self.factor * x

    assert await add(1, b=2) == 3
    assert await async_add(3, b=4) == 7
    assert await Scaler(3).scale(5) == 15
    assert await thread_name() != threading.current_thread().name
    results = await asyncio.gather(*(add(i) for i in range(20)))
    assert results == list(range(20))
    with pytest.raises(w.ParseError, match="boom"):
        await offload(dask_executor)(w.fail.__wrapped__)("boom")
