"""Keeping loopwatch's own threads out of the program's ``fork()``.

Python 3.12+ warns in the parent (``DeprecationWarning: This process is
multi-threaded, use of fork() may lead to deadlocks in the child``) from the
number of threads alive at the moment ``fork()`` returns, before the
after-fork hooks run. A watched pre-fork server would log that for every
worker because of threads it never started. So each of loopwatch's threads
ends in the before-fork hook and is started again in the parent's after-fork
hook; their state lives in their objects, not in the threads, so nothing is
lost across the fork.
"""

from __future__ import annotations

import threading
import time

#: How long a fork waits for one of loopwatch's threads to finish what it is doing
#: (a watchdog step takes well under a millisecond). Past that the fork goes ahead:
#: the thread ends at its next chance, and only the warning is not avoided.
FORK_WAIT = 1.0


def join_for_fork(thread: threading.Thread | None, timeout: float = FORK_WAIT) -> bool:
    """Wait (up to ``timeout``) for a thread told to end; True if it had to end.

    False for no thread and for the calling thread itself (a fork from inside
    one of loopwatch's threads cannot wait for that thread).

    ``join()`` returns once the thread has stopped running Python code, but the
    kernel counts it until it has exited: a fork a few microseconds later would
    still warn about it, so this also waits (briefly) for the kernel's count.
    """
    if thread is None or thread is threading.current_thread():
        return False
    threads = os_thread_count() if thread.is_alive() else None
    thread.join(timeout)
    if not thread.is_alive():
        wait_for_thread_exit(threads)
    return True


def os_thread_count() -> int | None:
    """The threads of this process as the kernel counts them (Linux), or None.

    That is the count Python's fork warning reads, C threads included.
    """
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[17])  # field 20, num_threads; fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def wait_for_thread_exit(count_before: int | None, timeout: float = 0.05) -> None:
    """Wait until the process has fewer threads than ``count_before``.

    A C thread that was told to end (faulthandler's timer thread, cancelled) has
    stopped running Python code, but the kernel counts it until it has exited:
    a fork a few microseconds later would still warn about it.
    """
    if count_before is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = os_thread_count()
        if count is None or count < count_before:
            return
        time.sleep(0.0001)
