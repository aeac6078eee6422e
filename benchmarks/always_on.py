"""What watching costs a healthy service, always on: the monitor threads' share of a core.

    python benchmarks/always_on.py [--seconds 10] [--rounds 3]

A healthy loop runs about 1000 short iterations a second (a task sleeping 1 ms
at a time, a little work each time) and never blocks. Each mode watches it for
``--seconds``, in a fresh child process, interleaved round by round:

* ``loopwatch t=0.1`` (the default threshold), ``t=0.5``, ``t=1.0``: ``watch()``
  around ``asyncio.run()``, so the loop is patched as it starts;
* ``loopwatch in-loop t=0.1``: ``watch()`` entered from a coroutine in the loop
  already running (``async with``, as an ASGI lifespan does), so the watchdog
  finds the loop running instead of patching its start;
* ``pyleak t=0.1``: pyleak's ``no_event_loop_blocking`` with its defaults (a
  monitor thread that pings the loop every ``check_interval``, 50 ms), as a
  baseline from outside this project;
* ``floor t=0.1``: a Python thread that only does what any look must do, as
  often as the watchdog looks at the default threshold (every 0.08 s): wake
  from a timed lock wait, read every thread's frame, read the loop thread's
  CPU clock. No watchdog of this design costs less.

Reported per mode (best and median over rounds): the CPU time of the
monitoring threads (loopwatch's own, named ``loopwatch-*``; pyleak's monitor)
as a share of one core over the wall time watched, read from each thread's
CPU clock (``time.pthread_getcpuclockid``), which does not move when the
machine is busy with something else; how many times the watchdog looked per
second; and how many calls loopwatch made in the loop's own thread per 1000
iterations (lag pings and their replies: what watching costs the loop itself).
The wall-time cost on the loop is not judged here: on these shared VMs it
varies by more than the effect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

ITERATION_SLEEP = 0.001
MODES = ("loopwatch t=0.1", "loopwatch in-loop t=0.1", "loopwatch t=0.5", "loopwatch t=1.0",
         "pyleak t=0.1", "floor t=0.1")
TARGET_SHARE = 0.1  # percent of a core, at the default threshold


def _thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def _healthy(seconds: float, iterations: list[int]) -> None:
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        total += sum(range(50))  # a little work in each iteration
        iterations[0] += 1
        await asyncio.sleep(ITERATION_SLEEP)


def _monitor_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.ident is not None]


async def _watched_by_pyleak(seconds: float, iterations: list[int]) -> dict[str, Any]:
    from pyleak import no_event_loop_blocking

    before = set(threading.enumerate())
    async with no_event_loop_blocking(threshold=0.1):
        await asyncio.sleep(0.05)  # its monitor thread is running now
        monitors = _monitor_threads(before)
        start_cpu = sum(_thread_cpu(t) for t in monitors)
        start = time.monotonic()
        await _healthy(seconds, iterations)
        cpu = sum(_thread_cpu(t) for t in monitors) - start_cpu
        wall = time.monotonic() - start
    return {"cpu": cpu, "wall": wall, "threads": [t.name for t in monitors]}


def _floor(seconds: float, iterations: list[int]) -> dict[str, Any]:
    stop = threading.Event()
    loop_thread = threading.get_ident()
    looks = [0]

    def look() -> None:
        sleeper = threading.Lock()
        sleeper.acquire()
        clock = time.pthread_getcpuclockid(loop_thread)
        while not stop.is_set():
            sleeper.acquire(timeout=0.08)
            sys._current_frames().get(loop_thread)
            time.clock_gettime(clock)
            looks[0] += 1

    thread = threading.Thread(target=look, name="floor")
    thread.start()
    start_cpu, start = _thread_cpu(thread), time.monotonic()
    asyncio.run(_healthy(seconds, iterations))
    cpu, wall = _thread_cpu(thread) - start_cpu, time.monotonic() - start
    stop.set()
    thread.join()
    return {"cpu": cpu, "wall": wall, "threads": ["floor"], "steps": looks[0], "loop_calls": 0}


def _child(mode: str, seconds: float) -> dict[str, Any]:
    iterations = [0]
    if mode.startswith("floor"):
        result = _floor(seconds, iterations)
        result["iterations"] = iterations[0]
        return result
    if mode.startswith("pyleak"):
        result = asyncio.run(_watched_by_pyleak(seconds, iterations))
        result["iterations"] = iterations[0]
        return result

    import loopwatch
    from loopwatch import probe as probe_module
    from loopwatch import watchdog as watchdog_module

    threshold = float(mode.split("t=")[1])
    steps = [0]
    step = watchdog_module.Watchdog.look

    def counted_step(self: Any, *args: Any, **kwargs: Any) -> float:
        steps[0] += 1
        return step(self, *args, **kwargs)

    loop_calls = [0]
    ping = probe_module.Probe.ping

    def counted_ping(self: Any, now: float) -> None:
        loop_calls[0] += 1  # each ping is answered by one callback in the loop thread
        ping(self, now)

    watchdog_module.Watchdog.look = counted_step  # type: ignore[method-assign]
    probe_module.Probe.ping = counted_ping  # type: ignore[method-assign]

    async def main() -> dict[str, Any]:
        await asyncio.sleep(0.05)  # found, watched, looked at
        monitors = [t for t in threading.enumerate() if t.name.startswith("loopwatch")]
        start_cpu = sum(_thread_cpu(t) for t in monitors)
        start_steps, start_calls = steps[0], loop_calls[0]
        start = time.monotonic()
        await _healthy(seconds, iterations)
        cpu = sum(_thread_cpu(t) for t in monitors if t.is_alive()) - start_cpu
        wall = time.monotonic() - start
        return {
            "cpu": cpu,
            "wall": wall,
            "threads": [t.name for t in monitors],
            "steps": steps[0] - start_steps,
            "loop_calls": loop_calls[0] - start_calls,
        }

    session = loopwatch.watch(threshold=threshold)
    if "in-loop" in mode:

        async def in_loop() -> dict[str, Any]:
            async with session:
                return await main()

        result = asyncio.run(in_loop())
    else:
        with session:
            result = asyncio.run(main())
    result["iterations"] = iterations[0]
    result["blocks"] = len(session.report().blocks)
    return result


def _run_child(mode: str, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--seconds", str(seconds)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.seconds)))
        return

    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in MODES:
            results[mode].append(_run_child(mode, args.seconds))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    print(f"A healthy loop, ~{1 / ITERATION_SLEEP:.0f} short iterations/s, {args.seconds:.0f} s "
          f"per run, {args.rounds} rounds (best / median)")
    print(f"{'mode':<24} {'monitor CPU, % of a core':>26} {'looks/s':>9} "
          f"{'loop-thread calls/1000 it.':>27} {'iterations/s':>13}")
    for mode in MODES:
        runs = results[mode]
        shares = [100 * r["cpu"] / r["wall"] for r in runs]
        rate = statistics.median(r["iterations"] / r["wall"] for r in runs)
        looks = calls = "-"
        if "steps" in runs[0]:
            looks = f"{statistics.median(r['steps'] / r['wall'] for r in runs):.1f}"
            per_1000 = statistics.median(1000 * r["loop_calls"] / r["iterations"] for r in runs)
            calls = f"{per_1000:.2f}"
        print(f"{mode:<24} {min(shares):>12.3f} / {statistics.median(shares):<11.3f} "
              f"{looks:>9} {calls:>27} {rate:>13.0f}")
    best = min(100 * r["cpu"] / r["wall"] for r in results["loopwatch t=0.1"])
    pyleak = min(100 * r["cpu"] / r["wall"] for r in results["pyleak t=0.1"])
    verdict = "ok" if best <= TARGET_SHARE and best < pyleak else "OVER TARGET"
    print(f"loopwatch at the default threshold: {best:.3f}% of a core (target <= "
          f"{TARGET_SHARE}%, and below pyleak's {pyleak:.3f}%): {verdict}")


if __name__ == "__main__":
    main()
