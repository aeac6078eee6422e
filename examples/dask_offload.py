"""The same ``@loopwatch.offload`` decorator, with a dask.distributed cluster as the target.

    pip install "loopwatch[dask]"
    python examples/dask_offload.py [--runs 8] [--steps 1500000]

Starts a local cluster of two worker processes (``LocalCluster(processes=True,
n_workers=2)``), wraps a pure-Python simulation with
``loopwatch.offload(client.get_executor(pure=False))`` and awaits eight runs of
it from an event loop, while a ticker task on that loop counts its ticks. A
``loopwatch.watch(threshold=0.05)`` session shows the loop stayed free: no
blocks, a small heartbeat lag, every tick on time. Point ``Client`` at a real
scheduler's address instead of a ``LocalCluster`` and the same code runs on
many machines.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable

import loopwatch

try:
    from distributed import Client, LocalCluster
except ImportError:
    sys.exit('this example needs dask.distributed: pip install "loopwatch[dask]"')

RUNS = 8
STEPS = 1_500_000  # random points per run: about 0.3 s of pure Python each
TICK = 0.01


def estimate_pi(seed: int, steps: int) -> tuple[float, int]:
    """Monte Carlo estimate of pi, pure Python (holds the GIL); (estimate, pid that ran it)."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(steps):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return 4 * inside / steps, os.getpid()


async def ticker(ticks: list[float]) -> None:
    """Something else the loop has to do meanwhile: wake every 10 ms."""
    while True:
        await asyncio.sleep(TICK)
        ticks.append(time.perf_counter())


async def compute_while_ticking(
    on_cluster: Callable[[int, int], Awaitable[tuple[float, int]]], runs: int, steps: int,
) -> tuple[list[tuple[float, int]], float, list[float]]:
    """Run estimate_pi on the cluster, concurrently, while ticking on this loop."""
    ticks: list[float] = []
    tick_task = asyncio.create_task(ticker(ticks))
    start = time.perf_counter()
    results = await asyncio.gather(*(on_cluster(seed, steps) for seed in range(runs)))
    wall = time.perf_counter() - start
    tick_task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    return results, wall, gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="simulations to run")
    parser.add_argument("--steps", type=int, default=STEPS, help="random points per run")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be at least 1")
    # dask logs its startup at INFO; keep its warnings
    logging.getLogger("distributed").setLevel(logging.WARNING)
    began = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        print(f"cluster of {len(cluster.workers)} worker processes up in "
              f"{time.perf_counter() - began:.1f} s")
        # pure=False: every call runs, even if its arguments equal an earlier call's.
        # Decorating (and so importing loopwatch.offload) happens before the loop starts.
        on_cluster = loopwatch.offload(client.get_executor(pure=False))(estimate_pi)
        # The watch starts once the cluster is up: the blocks it finds are our loop's,
        # not dask's start-up (dask's own event loop thread is watched as well).
        with loopwatch.watch(threshold=0.05) as session:
            work = compute_while_ticking(on_cluster, args.runs, args.steps)
            results, wall, gaps = asyncio.run(work)
    report = session.report()

    pids = sorted({pid for _, pid in results})
    mean = sum(estimate for estimate, _ in results) / len(results)
    print(f"{args.runs} runs of estimate_pi({args.steps:,} steps) in {wall:.2f} s "
          f"on processes {pids} (this one is {os.getpid()}): pi ~ {mean:.4f}")
    print(f"ticker on the loop meanwhile: {len(gaps) + 1} ticks, longest gap "
          f"{max(gaps, default=0) * 1000:.0f} ms (asked for {TICK * 1000:.0f} ms)")
    for loop in report.loops:
        lag = "" if loop.lag_max is None else f", heartbeat lag max {loop.lag_max * 1000:.0f} ms"
        blocks = f"{loop.blocks} block{'' if loop.blocks == 1 else 's'}"
        print(f"loopwatch: {loop.loop}: {blocks} over 50 ms{lag}")
    for block in report.blocks:
        print(f"  block: {block.duration * 1000:.0f} ms at {block.site} ({block.kind})")
    if os.getpid() in pids:
        print("unexpected: a run happened in this process")
        return 1
    return 0


if __name__ == "__main__":  # dask's worker processes import this file: start nothing then
    sys.exit(main())
