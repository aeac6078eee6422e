"""What profile mode costs: yappi through loopwatch's Profiler vs bare asyncio vs debug mode.

Runs the loop-heavy workloads of ``benchmarks/overhead.py`` with a loop whose
selector calls ``Profiler.begin_iteration()`` after every ``select`` (as the
watchdog's probe does in profile mode), interleaved round by round with bare
asyncio; the ratio compares best rounds (noise only adds time), the median
ratio is printed beside it. asyncio debug mode, for scale, runs one round at a
tenth of the size, scaled up.

    python benchmarks/profile_cost.py            # full size, 5 rounds
    python benchmarks/profile_cost.py --quick    # a tenth of the size, 2 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import yappi  # type: ignore[import-untyped]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Workload, compare

from loopwatch.profiler import Profiler


def _loop_calling(hook: Callable[[], Any]) -> asyncio.AbstractEventLoop:
    """A new event loop whose selector calls ``hook`` each time ``select`` returns."""
    loop = asyncio.new_event_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select

    def select_then_hook(timeout: float | None = None) -> Any:
        events = select(timeout)
        hook()
        return events

    selector.select = select_then_hook
    return loop


def _run(work: Workload, n: int, hook: Callable[[], Any] | None) -> float:
    factory = asyncio.new_event_loop if hook is None else lambda: _loop_calling(hook)
    with asyncio.Runner(loop_factory=factory) as runner:
        start = time.perf_counter()
        runner.run(work(n))
        return time.perf_counter() - start


def _bare(work: Workload, n: int) -> float:
    return _run(work, n, None)


def _hook_only(work: Workload, n: int) -> float:
    """The begin_iteration call alone, with yappi off: the floor of the wiring's cost."""
    profiler = Profiler()
    return _run(work, n, profiler.begin_iteration)


def _yappi_plain(work: Workload, n: int) -> float:
    """yappi wall clock with builtins and no tags: what any yappi user pays."""
    yappi.set_clock_type("wall")
    yappi.start(builtins=True)
    try:
        return _run(work, n, None)
    finally:
        yappi.stop()
        yappi.clear_stats()


def _profiler(duty: float, window: float) -> Callable[[Workload, int], float]:
    def measure(work: Workload, n: int) -> float:
        profiler = Profiler(duty=duty, window=window)
        profiler.start()
        try:
            return _run(work, n, profiler.begin_iteration)
        finally:
            profiler.stop()

    return measure


MODES: dict[str, Callable[[Workload, int], float]] = {
    "bare asyncio": _bare,
    "begin_iteration only": _hook_only,
    "yappi, no tags": _yappi_plain,
    "Profiler duty 1.0": _profiler(1.0, 1.0),
    "Profiler duty 0.2": _profiler(0.2, 1.0),
    "Profiler duty 0.05": _profiler(0.05, 1.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per workload (default 5)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the size, 2 rounds")
    parser.add_argument("--no-debug", action="store_true", help="skip asyncio debug mode")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    print(f"Python {sys.version.split()[0]}, yappi {version('yappi')}, "
          f"load average {os.getloadavg()[0]:.2f}, {rounds} interleaved rounds; "
          "ratio = mode / bare asyncio (best round, and median round)")
    compare(MODES, rounds=rounds, scale=0.1 if args.quick else 1.0, debug=not args.no_debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
