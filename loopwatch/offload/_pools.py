"""The shared pools, one per set of options, created on first use and shut down at exit.

After ``fork`` the child must not use the parent's pools: their threads do not
exist there and their worker processes belong to the parent. An at-fork hook
forgets them in the child (closing only the child's copies of their file
descriptors); the child's first call creates fresh pools.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (imported for its atexit handler's place: see below)
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from loopwatch.offload._process import ProcessPool

_lock = threading.Lock()
_threads: dict[int | None, ThreadPoolExecutor] = {}
_processes: dict[tuple[int | None, BaseContext | None], ProcessPool] = {}
_atexit_registered = False
_P = TypeVar("_P")


def _shared(table: dict[Any, _P], key: Any, make: Callable[[], _P]) -> _P:
    """The pool for ``key``, made once even when callers race (checked again under the lock)."""
    pool = table.get(key)
    if pool is not None:
        return pool
    with _lock:
        pool = table.get(key)
        if pool is None:
            _register_atexit_locked()
            pool = table[key] = make()
        return pool


def thread_pool(max_workers: int | None) -> ThreadPoolExecutor:
    return _shared(
        _threads,
        max_workers,
        lambda: ThreadPoolExecutor(max_workers, thread_name_prefix="loopwatch-offload"),
    )


def process_pool(max_workers: int | None, context: BaseContext | None) -> ProcessPool:
    return _shared(_processes, (max_workers, context), lambda: ProcessPool(max_workers, context))


def shutdown(timeout: float = 2.0) -> None:
    """Shut down every pool ``@offload`` has started; later calls start new ones.

    Worker processes finish the call they are running (up to ``timeout``
    seconds, then they are terminated); calls still waiting fail with
    :class:`~loopwatch.offload.OffloadError`. Runs by itself at interpreter
    exit; call it yourself to release the workers earlier.

    >>> from loopwatch.offload import shutdown
    >>> shutdown()
    """
    with _lock:
        processes = list(_processes.values())
        threads = list(_threads.values())
        _processes.clear()
        _threads.clear()
    deadline = time.monotonic() + timeout
    for thread_pool_ in threads:
        thread_pool_.shutdown(wait=False, cancel_futures=True)
    for process_pool_ in processes:
        process_pool_.shutdown(max(0.0, deadline - time.monotonic()))
    for thread_pool_ in threads:
        # A thread may be running user code that never returns: wait for the
        # idle ones to end, but not forever.
        for thread in list(getattr(thread_pool_, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))


def _register_atexit_locked() -> None:
    global _atexit_registered
    # atexit runs handlers last-registered first. multiprocessing's own handler
    # joins every non-daemon child: it must run after ours has told the
    # workers to stop, so it is registered (by importing multiprocessing.util,
    # above) before ours.
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True


def _after_fork_in_child() -> None:
    global _lock
    # The lock may have been held by another thread of the parent at fork time.
    _lock = threading.Lock()
    for pool in list(_processes.values()):
        try:
            pool.forget_after_fork()
        except Exception:
            pass
    _processes.clear()
    # The parent's pool threads do not exist in the child; an executor that
    # thinks they do would never run anything.
    _threads.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
