"""What watching costs: bare asyncio vs loopwatch modes vs asyncio debug mode.

Each workload is run under every mode, interleaved round by round so that the
machine's noise hits all modes alike, and compared with bare asyncio measured
in the same run. The headline ratio compares the best (fastest) round of each
mode: on a shared machine, noise only ever adds time, so the minimum is the
most repeatable estimate of the true cost. The median ratio is printed beside it.
The CPU columns compare the process's CPU time (every thread: the loop's and
loopwatch's own) over the same call, best round: less shaken by other programs
on the machine than wall time, and it counts work done on another core too.

"bare + 1 idle thread" is bare asyncio with one more thread that only waits:
on Linux, any second thread makes every system call the loop makes (its
``select`` each iteration) dearer (``benchmarks/thread_cost.py``), so that row
is the floor for loopwatch's one watchdog thread, and what a service that has
any thread at all (a default executor, a logging thread) already pays.

    python benchmarks/overhead.py            # full size
    python benchmarks/overhead.py --quick    # a tenth of the size, for a smoke test

asyncio debug mode is 10-40x slower, so it runs on a tenth of each workload
(one round) and its time is scaled up; the table says so.

Under each table, "loopwatch calls in the loop's thread": how many times the
loop's own thread ran a function of loopwatch's during one ``watch()`` run of
the workload (lag pings answered, select hooks, discovery, the GC timer), per
1000 loop iterations. On Python 3.12+ it is counted with ``sys.monitoring``
events on loopwatch's code objects only, so the loop runs at its own pace; on
3.11, under ``sys.setprofile``, which slows the loop while time-driven calls
keep theirs (an upper bound). Wall-time ratios move with the machine; this
count does not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import loopwatch

Workload = Callable[[int], Coroutine[Any, Any, None]]


async def call_soon_chain(n: int) -> None:
    """n callbacks, each scheduling the next: one callback per loop iteration."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = n

    def step() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    await done


async def sleeping_tasks(n: int) -> None:
    """n/200 tasks (2000 at full size), each awaiting sleep(0) 200 times."""

    async def worker() -> None:
        for _ in range(200):
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(max(1, n // 200))))


async def tcp_echo(n: int) -> None:
    """n request/response round trips over a loopback TCP connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(b"ping")
        await writer.drain()
        await reader.readexactly(4)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


WORKLOADS: list[tuple[str, Workload, int]] = [
    ("500k call_soon callbacks", call_soon_chain, 500_000),
    ("2000 tasks x 200 sleep(0)", sleeping_tasks, 400_000),
    ("20k loopback TCP echo round trips", tcp_echo, 20_000),
]


def _bare(work: Workload, n: int) -> float:
    start = time.perf_counter()
    asyncio.run(work(n))
    return time.perf_counter() - start


def _bare_with_idle_thread(work: Workload, n: int) -> float:
    # What any second thread costs (see benchmarks/thread_cost.py): the floor for a
    # design with one watchdog thread, and the usual state of a real service anyway.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        return _bare(work, n)
    finally:
        stop.set()
        thread.join()


def _watched(options: dict[str, Any]) -> Callable[[Workload, int], float]:
    def measure(work: Workload, n: int) -> float:
        with loopwatch.watch(**options) as session:
            start = time.perf_counter()
            asyncio.run(work(n))
            elapsed = time.perf_counter() - start
        if session.report().blocks:
            print(f"  (note: {len(session.report().blocks)} block(s) reported)", file=sys.stderr)
        return elapsed

    return measure


def _loopwatch_code() -> list[Any]:
    """Every code object of loopwatch's modules, nested functions included."""
    import importlib
    import pkgutil

    codes: list[Any] = []
    pending: list[Any] = []
    for info in pkgutil.walk_packages(loopwatch.__path__, "loopwatch."):
        if info.name in ("loopwatch.__main__", "loopwatch.pytest_plugin"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == info.name:
                pending += [getattr(f, "__code__", None) for f in vars(value).values()]
                pending += [getattr(getattr(f, "fget", None), "__code__", None)
                            for f in vars(value).values()]
                pending += [getattr(getattr(f, "__func__", None), "__code__", None)
                            for f in vars(value).values()]
            elif getattr(value, "__module__", None) == info.name:
                pending.append(getattr(value, "__code__", None))
    while pending:
        code = pending.pop()
        if code is None or not hasattr(code, "co_consts") or code in codes:
            continue
        codes.append(code)
        pending += [c for c in code.co_consts if hasattr(c, "co_consts")]
    return codes


def loop_thread_calls(work: Workload, n: int, options: dict[str, Any]) -> tuple[int, int, str]:
    """(entries into loopwatch's code, loop iterations, how counted) in the loop's thread."""
    run_once = asyncio.base_events.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]
    counts = [0, 0]
    loop_thread = threading.get_ident()
    running = [False]  # only while the workload runs: not watch() itself, in this thread too

    async def workload() -> None:
        running[0] = True
        try:
            await work(n)
        finally:
            running[0] = False

    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        # Python 3.12+: events for loopwatch's code objects and _run_once only, so
        # the loop runs at its own pace (time-driven calls keep their true share).
        tool = monitoring.PROFILER_ID
        monitoring.use_tool_id(tool, "loopwatch-overhead")
        ours = set(_loopwatch_code())

        def started(code: Any, offset: int) -> Any:
            if running[0] and threading.get_ident() == loop_thread:
                counts[1 if code is run_once else 0] += 1
            return None

        monitoring.register_callback(tool, monitoring.events.PY_START, started)
        for code in (*ours, run_once):
            monitoring.set_local_events(tool, code, monitoring.events.PY_START)
        try:
            with loopwatch.watch(**options):
                asyncio.run(workload())
        finally:
            for code in (*ours, run_once):
                monitoring.set_local_events(tool, code, 0)
            monitoring.register_callback(tool, monitoring.events.PY_START, None)
            monitoring.free_tool_id(tool)
        return counts[0], counts[1], "sys.monitoring"

    own = os.path.dirname(os.path.abspath(loopwatch.__file__)) + os.sep

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or not running[0]:
            return
        code = frame.f_code
        if code is run_once:
            counts[1] += 1
        elif code.co_filename.startswith(own) and not (
            frame.f_back is not None and frame.f_back.f_code.co_filename.startswith(own)
        ):
            counts[0] += 1

    with loopwatch.watch(**options):
        sys.setprofile(profile)  # this thread only: the watchdog's own work is not counted
        try:
            asyncio.run(workload())
        finally:
            sys.setprofile(None)
    return counts[0], counts[1], "sys.setprofile, which slows the loop: an upper bound"


def _debug(work: Workload, n: int) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stderr(None):  # type: ignore[type-var]
        warnings.simplefilter("ignore")
        asyncio.run(work(n), debug=True)
    return time.perf_counter() - start


MODES: dict[str, Callable[[Workload, int], float]] = {
    "bare asyncio": _bare,
    "bare + 1 idle thread": _bare_with_idle_thread,
    "watch() default": _watched({}),
    "watch(precise=True)": _watched({"precise": True}),
    "watch(profile=True)": _watched({"profile": True}),
    "watch(profile, duty 0.2)": _watched({"profile": True, "profile_duty": 0.2}),
}
#: Modes that take many times longer: measured in the first few rounds only.
HEAVY = frozenset({"watch(profile=True)", "watch(profile, duty 0.2)"})
HEAVY_ROUNDS = 3


def compare(
    modes: dict[str, Callable[[Workload, int], float]],
    *,
    rounds: int,
    scale: float = 1.0,
    heavy: frozenset[str] = frozenset(),
    heavy_rounds: int = 3,
    debug: bool = True,
    count_calls: bool = True,
) -> None:
    """Run every workload under every mode, interleaved, and print the table.

    The first mode is the baseline. Modes in ``heavy`` run in the first
    ``heavy_rounds`` rounds only.
    """
    baseline = next(iter(modes))
    width = max(24, *(len(mode) for mode in modes))
    for name, work, size in WORKLOADS:
        n = max(1, int(size * scale))
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu: dict[str, list[float]] = {mode: [] for mode in modes}
        modes[baseline](work, max(1, n // 10))  # warm-up: imports, first-loop costs
        for round_ in range(rounds):
            order = list(modes)
            shift = round_ % len(order)  # rotate so no mode always runs first
            for mode in order[shift:] + order[:shift]:
                if mode in heavy and round_ >= heavy_rounds:
                    continue
                gc.collect()
                cpu_start = time.process_time()
                times[mode].append(modes[mode](work, n))
                cpu[mode].append(time.process_time() - cpu_start)
        best_base = min(times[baseline])
        median_base = statistics.median(times[baseline])
        cpu_base = min(cpu[baseline])
        print(f"\n{name} (n={n:,})")
        for mode, values in times.items():
            best, median = min(values), statistics.median(values)
            note = f"   ({len(values)} rounds)" if mode in heavy else ""
            print(f"  {mode:<{width}} best {best:7.3f} s  {best / best_base:6.3f}x   "
                  f"median {median:7.3f} s  {median / median_base:6.3f}x   "
                  f"CPU best {min(cpu[mode]) / cpu_base:6.3f}x{note}")
        if debug:
            slow = _debug(work, max(1, n // 10)) * 10
            print(f"  {'asyncio debug mode':<{width}} ~    {slow:7.3f} s  "
                  f"{slow / best_base:6.3f}x   (1 round at 1/10 size, scaled)")
        if count_calls:
            calls, iterations, how = loop_thread_calls(work, n, {})
            print(f"  loopwatch calls in the loop's thread, watch() default: {calls} in "
                  f"{iterations:,} iterations, {1000 * calls / max(1, iterations):.3f} per 1000 "
                  f"(counted with {how})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per workload (default 15)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the size, 3 rounds")
    parser.add_argument("--no-debug", action="store_true", help="skip asyncio debug mode")
    parser.add_argument("--default-only", action="store_true",
                        help="only bare asyncio (alone and with an idle thread) and watch()")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    modes = MODES
    if args.default_only:
        modes = {
            name: MODES[name]
            for name in ("bare asyncio", "bare + 1 idle thread", "watch() default")
        }
    print(f"loopwatch {loopwatch.__version__}, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.2f}, {rounds} interleaved rounds; "
          "ratio = mode / bare asyncio (best round, and median round)")
    compare(modes, rounds=rounds, scale=0.1 if args.quick else 1.0, heavy=HEAVY,
            debug=not args.no_debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
