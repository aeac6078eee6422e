"""What the mere existence of a second thread costs a system call in the loop thread.

asyncio calls ``select``/``epoll`` once per loop iteration (with timeout 0 when
callbacks are ready). On Linux, while a process has a second thread, every such
call costs more, whatever the other thread does and even when it is not a
Python thread: threads share one file-descriptor table, and the kernel then
counts references on the file for each system call on a descriptor (with the
table to itself it skips that). A thread that takes a private copy of the table
(``unshare(CLONE_FILES)``) removes the cost, which is how the cause shows; but a
Python thread cannot safely do that, since any finalizer (a socket's ``close``)
may run in it and would act on its copy. loopwatch's watchdog is one such
thread, so this is the floor of its overhead on a loop that runs one trivial
callback per iteration.

    python benchmarks/thread_cost.py [--rounds 7]

Each configuration runs in a fresh child process (a C thread cannot be taken
back), interleaved round by round; each child reports its thread CPU time
(``time.thread_time``) for 300k ``epoll.poll(0)`` calls and for a pure-Python
loop that makes no system call. Configurations: alone; with a C thread sleeping
in ``pause()`` (started through ctypes, unknown to Python); with an idle Python
thread; with an idle Python thread that first unshares its descriptor table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import select
import statistics
import subprocess
import sys
import threading
import time

CALLS = 300_000
CONFIGS = ("alone", "C thread", "Python thread", "own fd table")
_CLONE_FILES = 0x400


def poll_zero() -> float:
    epoll = select.epoll()
    try:
        start = time.thread_time()
        for _ in range(CALLS):
            epoll.poll(0)
        return time.thread_time() - start
    finally:
        epoll.close()


def pure_python() -> float:
    start = time.thread_time()
    total = 0
    for i in range(CALLS * 10):
        total += i
    return time.thread_time() - start


def child(config: str) -> None:
    if config == "C thread":
        libc = ctypes.CDLL(None)
        thread = ctypes.c_ulong()
        pause = ctypes.cast(libc.pause, ctypes.c_void_p)
        if libc.pthread_create(ctypes.byref(thread), None, pause, None) != 0:
            raise SystemExit("could not start a C thread")
    elif config == "Python thread":
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    elif config == "own fd table":
        unshared = threading.Event()

        def idle() -> None:
            if ctypes.CDLL(None).unshare(_CLONE_FILES) != 0:
                raise SystemExit("unshare(CLONE_FILES) failed")
            unshared.set()
            threading.Event().wait()

        threading.Thread(target=idle, daemon=True).start()
        unshared.wait(5)
    poll_zero()  # warm-up
    print(json.dumps({"poll": min(poll_zero() for _ in range(3)),
                      "pure": min(pure_python() for _ in range(3))}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not hasattr(select, "epoll"):
        print("needs Linux (select.epoll)")
        return 0
    if args.child:
        child(args.child)
        return 0
    results: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    for round_ in range(args.rounds):
        shift = round_ % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            out = subprocess.run([sys.executable, __file__, "--child", config],
                                 capture_output=True, text=True, check=True).stdout
            results[config].append(json.loads(out))
    print(f"thread CPU time of {CALLS:,} epoll.poll(0) calls, and of a pure-Python loop; "
          f"{args.rounds} interleaved rounds, ratio to 'alone' (best round, median round)")
    base = {k: [r[k] for r in results["alone"]] for k in ("poll", "pure")}
    for config in CONFIGS:
        cells = []
        for key in ("poll", "pure"):
            values = [r[key] for r in results[config]]
            cells.append(f"{key} {min(values) / min(base[key]):.3f}x "
                         f"/ {statistics.median(values) / statistics.median(base[key]):.3f}x")
        print(f"  {config:<14} " + "    ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
