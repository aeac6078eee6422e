"""Soak: does one watch session's memory stay flat while it runs for a long time?

One ``loopwatch.watch()`` session sees, over ten identical rounds:

* a long-lived event loop (one loop, run once per round, like a service's) doing
  1M quick iterations in all, with real blocks between them at thousands of
  distinct source lines (generated functions, one ``time.sleep`` each), and a
  few real "thousand cuts" (iterations over the site threshold, under the
  block threshold);
* short-lived loops: ``asyncio.run`` calls in the main thread and in threads
  that end, each blocking once;
* the bulk of the blocks and cuts fed to ``Session.receive_block`` /
  ``Session.receive_cut``, the path the watchdog hands them to (100k real
  blocks would take hours at real thresholds), built the way the watchdog builds
  them: fresh frames for each, half at a few hot lines, half at ever new ones.

After each round it prints traced Python memory (tracemalloc) and RSS, and the
size of the structures that could grow; then the growth from the end of the
first round (warm-up: the deque of blocks and the site table fill) to the end,
split by who allocated it, going by the line that did (``--frames N``: the
innermost of N frames that is either's): loopwatch, this benchmark (the blocks
it feeds, its coroutines), or Python itself, such as CPython's interned-strings
table doubling to ~940 KiB once enough loops have come and gone (a bare
``asyncio.run`` loop, unwatched, does that too). The verdict counts loopwatch
and the benchmark.

    python benchmarks/soak.py            # 100k blocks, 1M iterations (a few minutes)
    python benchmarks/soak.py --quick    # a tenth of that, for a smoke test (< 30 s)

Real blocks use a small threshold (3 ms) and ``time.sleep`` (which lets go of
the GIL, so the sampler sees the line) to stay quick.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import loopwatch
from loopwatch import Block
from loopwatch._core.findings import Found
from loopwatch.model import Frame, Stack, classify
from loopwatch.watchdog import WATCHDOG, Cut

THRESHOLD = 0.003
BLOCK = 0.0045  # a real block: 1.5x the threshold
CUT = 0.0025  # a real cut: over the 2 ms site threshold, under the threshold
ROUNDS = 10
#: traced memory may grow by less than this after warm-up and still be called flat
FLAT = 1 << 20
#: frames kept per traced allocation, to tell who made it (each one more costs ~1.5x time)
TRACE_FRAMES = 1

_OWN_DIR = os.path.dirname(os.path.abspath(loopwatch.__file__)) + os.sep
_THIS = os.path.abspath(__file__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int | None:
    """Resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def generated_sites(n: int) -> list[Callable[[float], None]]:
    """n functions, each blocking at its own line of one generated file."""
    lines = ["import time", "_sleep = time.sleep"]
    for i in range(n):
        lines += [f"def site_{i}(seconds):", "    _sleep(seconds)"]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<soak-generated>", "exec"), namespace)
    return [namespace[f"site_{i}"] for i in range(n)]


def cut_here() -> None:
    time.sleep(CUT)


def short_lived_block() -> None:
    time.sleep(BLOCK)


async def long_lived_round(
    sites: list[Callable[[float], None]], first: int, blocks: int, iterations: int
) -> None:
    """``iterations`` quick iterations, with ``blocks`` real blocks spread among them."""
    per_block = iterations // blocks
    for i in range(blocks):
        for _ in range(per_block):
            await asyncio.sleep(0)
        sites[(first + i) % len(sites)](BLOCK)
        if i % 10 == 9:
            await asyncio.sleep(0)
            cut_here()
    for _ in range(iterations - per_block * blocks):
        await asyncio.sleep(0)


async def short_lived_main() -> None:
    for _ in range(3):
        await asyncio.sleep(0)
    short_lived_block()
    await asyncio.sleep(0)


def short_lived_loops(n: int, counter: list[int]) -> None:
    """n asyncio.run calls: half in this thread, half in threads (4 at a time) that end."""
    in_threads = n // 2
    for _ in range(n - in_threads):
        asyncio.run(short_lived_main())
    started = 0
    while started < in_threads:
        batch = []
        for _ in range(min(4, in_threads - started)):
            counter[0] += 1
            batch.append(threading.Thread(
                target=asyncio.run, args=(short_lived_main(),), name=f"soak-short-{counter[0]}"
            ))
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
        started += len(batch)


_STACK_DEPTH = 18
_HOT = [(f"/srv/app/handlers_{k}.py", 40 + k, f"handler_{k}") for k in range(10)]


def fed_block(number: int, new_site: int) -> Block:
    """A block like the watchdog's: fresh frames; even numbers at a hot line, odd at a new one."""
    if number % 2 == 0:
        file, line, function = _HOT[number // 2 % len(_HOT)]
    else:
        file, line, function = f"/srv/app/generated/mod_{new_site}.py", 7, f"gen_{new_site}"
    frames = (
        *(Frame(f"/srv/app/layer_{k}.py", 100 + k, f"layer_{k}") for k in range(_STACK_DEPTH)),
        Frame(file, line, function),
    )
    duration = THRESHOLD * (1.2 + (number % 37) / 10)
    cpu_ratio = (number % 11) / 10
    return Block(
        id=10_000_000 + number, loop="FedLoop#0 (fed)", started=time.time(),
        duration=duration, cpu_ratio=cpu_ratio, kind=classify(cpu_ratio), frames=frames,
        site=f"{file}:{line}", function=function, task=f"Task-{number}",
        coroutine="handle_request", samples=3, stacks=(Stack(frames, 3),),
        advice="", gil_held=0.5, gc_time=0.0,
    )


def fed_cut(number: int, new_site: int) -> Cut:
    if number % 2 == 0:
        file, line, function = _HOT[number // 2 % len(_HOT)]
    else:
        file, line, function = f"/srv/app/generated/cut_{new_site}.py", 3, f"cut_{new_site}"
    return Cut(duration=THRESHOLD * 0.8, cpu_ratio=0.9, site=f"{file}:{line}",
               function=function, gc_time=0.0)


def drain_sinks(timeout: float = 30.0) -> None:
    """Let loopwatch's callback thread (if this version has one) catch up before measuring."""
    try:
        from loopwatch._core.dispatch import DISPATCHER
    except ImportError:
        return
    deadline = time.monotonic() + timeout
    while getattr(DISPATCHER, "_queue", ()) and time.monotonic() < deadline:
        time.sleep(0.01)


def structures(session: loopwatch.Session) -> dict[str, int]:
    """Sizes of what could grow while a session runs (some are private: read defensively)."""
    from loopwatch import _log

    report = session.report()
    out = {
        "blocks kept": len(report.blocks),
        "dropped": report.dropped_blocks,
        "site entries": len(report.sites),
        "loops": len(report.loops),
        "events": len(report.events),
    }
    del report
    out["probes"] = len(getattr(WATCHDOG, "_probes", ()))
    out["clocks"] = len(getattr(WATCHDOG, "_clocks", ()))
    out["file verdicts"] = len(getattr(getattr(WATCHDOG, "_user_code", None), "_cache", ()))
    out["log-once keys"] = len(getattr(_log, "_seen", ()))
    return out


def _who(trace: tracemalloc.Trace) -> str:
    """Who made an allocation: the innermost of its frames that is loopwatch's or ours."""
    for frame in trace.traceback:  # innermost first
        # "<string>": __init__ and friends that dataclasses wrote, of loopwatch's model here
        if frame.filename.startswith(_OWN_DIR) or frame.filename == "<string>":
            return "loopwatch"
        if frame.filename in (_THIS, "<soak-generated>"):
            return "benchmark"
    return "Python itself"


def traced_by_owner() -> tuple[dict[str, int], dict[tuple[str, str, int], int]]:
    """Traced bytes by who allocated them, and by (who, file, line) of the innermost frame."""
    owners: dict[str, int] = {"loopwatch": 0, "benchmark": 0, "Python itself": 0}
    lines: dict[tuple[str, str, int], int] = {}
    for trace in tracemalloc.take_snapshot().traces:
        who = _who(trace)
        owners[who] += trace.size
        key = (who, trace.traceback[0].filename, trace.traceback[0].lineno)
        lines[key] = lines.get(key, 0) + trace.size
    return owners, lines


def kib(n: float) -> str:
    return f"{n / 1024:+,.0f} KiB" if n else "+0 KiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the size (< 30 s)")
    parser.add_argument("--blocks", type=int, help="blocks in all (default 100,000)")
    parser.add_argument("--iterations", type=int,
                        help="quick iterations of the long-lived loop (default 1,000,000)")
    parser.add_argument("--frames", type=int, default=TRACE_FRAMES,
                        help=f"frames traced per allocation (default {TRACE_FRAMES}; "
                             "more tells who allocated more surely, and is slower)")
    parser.add_argument("--top", type=int, default=5, metavar="N",
                        help="show the N source lines whose traced memory grew most "
                             "after warm-up (default 5)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    total_blocks = args.blocks or 100_000 // scale
    iterations = args.iterations or 1_000_000 // scale
    real_blocks = total_blocks // 10
    loops = total_blocks // 50
    fed_blocks = total_blocks - real_blocks - loops
    n_sites = 5000 // scale + 1000  # always more than MAX_SITES
    if min(real_blocks, loops, fed_blocks) < ROUNDS * 2:
        parser.error(f"--blocks {total_blocks} is too few for {ROUNDS} rounds")

    from loopwatch.model import MAX_SITES

    sites = generated_sites(n_sites)
    print(f"loopwatch soak: one watch() session, threshold {THRESHOLD * 1000:.0f} ms, "
          f"max_blocks 1000, MAX_SITES {MAX_SITES}, {ROUNDS} identical rounds", flush=True)
    print(f"  real, long-lived loop : {real_blocks:,} blocks ({BLOCK * 1000:.1f} ms sleeps at "
          f"{n_sites:,} generated lines) and {real_blocks // 10:,} cuts among {iterations:,} "
          "iterations", flush=True)
    print(f"  real, short-lived     : {loops:,} asyncio.run loops (half in threads that end), "
          "one block each", flush=True)
    print(f"  fed to receive_block  : {fed_blocks:,} blocks and as many cuts via receive_cut "
          f"(half at 10 hot lines, half at new ones); not the watchdog's path", flush=True)

    # blocks of the short-lived loops, as on_block saw them: (reported, without a CPU ratio)
    short_seen = {"main thread": [0, 0], "threads": [0, 0]}

    def on_block(block: Block) -> None:
        if block.function == "short_lived_block":
            seen = short_seen["threads" if "soak-short-" in block.loop else "main thread"]
            seen[0] += 1
            seen[1] += block.cpu_ratio is None

    tracemalloc.start(args.frames)
    began = time.monotonic()
    loop = asyncio.new_event_loop()
    thread_counter = [0]
    owned: list[tuple[dict[str, int], dict[tuple[str, str, int], int]]] = []
    rows: list[tuple[int, int, int, int, int | None, float, dict[str, int]]] = []
    session = loopwatch.watch(threshold=THRESHOLD, on_block=on_block, max_blocks=1000)
    done_blocks = done_iterations = new_site = 0
    with session:
        for round_ in range(ROUNDS):
            part = round_ + 1
            real = real_blocks * part // ROUNDS - real_blocks * round_ // ROUNDS
            its = iterations * part // ROUNDS - iterations * round_ // ROUNDS
            short = loops * part // ROUNDS - loops * round_ // ROUNDS
            fed = fed_blocks * part // ROUNDS - fed_blocks * round_ // ROUNDS
            loop.run_until_complete(
                long_lived_round(sites, real_blocks * round_ // ROUNDS, real, its))
            short_lived_loops(short, thread_counter)
            for k in range(fed):
                number = done_blocks + k
                new_site += number % 2
                session.receive_block(Found(fed_block(number, new_site), 0.0, 0.1))
                session.receive_cut(fed_cut(number, new_site))
            done_blocks += real + short + fed
            done_iterations += its
            drain_sinks()
            WATCHDOG.flush()
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
            if round_ == 0:
                # before reading RSS: the snapshot's own memory stays in RSS afterwards
                owned.append(traced_by_owner())
                gc.collect()
            sizes = structures(session)
            rows.append((done_blocks, done_iterations, current, peak, rss(),
                         time.monotonic() - began, sizes))
            if round_ == ROUNDS - 1:
                owned.append(traced_by_owner())
            if round_ == 0:
                names = "  ".join(f"{name:>{max(6, len(name))}}" for name in sizes)
                print(f"\n{'round':>5} {'blocks':>8} {'iterations':>10} {'traced':>10} "
                      f"{'peak':>9} {'RSS':>9} {'time':>6}   {names}")
            values = "  ".join(f"{v:>{max(6, len(k))},}" for k, v in sizes.items())
            rss_text = f"{rows[-1][4] / 2**20:7.1f} M" if rows[-1][4] is not None else "     ?"
            print(f"{part:>5} {done_blocks:>8,} {done_iterations:>10,} {current / 2**20:8.2f} M "
                  f"{peak / 2**20:7.1f} M {rss_text} {rows[-1][5]:5.0f}s   {values}", flush=True)
        report = session.report()
    loop.close()
    drain_sinks()
    tracemalloc.stop()

    counted = sum(s.blocks for s in report.sites)
    found = len(report.blocks) + report.dropped_blocks
    other = next((s for s in report.sites if s.site == "<other sites>"), None)
    print(f"\nreport: {found:,} blocks found ({len(report.blocks):,} kept, "
          f"{report.dropped_blocks:,} dropped), {len(report.sites):,} site entries; "
          f"blocks summed over sites {counted:,} ({'right' if counted == found else 'WRONG'})")
    if other is not None:
        print(f"  <other sites>: {other.count:,} slow iterations ({other.blocks:,} blocks), "
              f"total {other.total:.1f} s, p95 {other.p95 * 1000:.1f} ms, "
              f"max {other.max * 1000:.1f} ms")
    try:
        from loopwatch._core.dispatch import DISPATCHER

        print(f"  callback deliveries dropped (sink queue full): {DISPATCHER.dropped:,}")
    except ImportError:
        pass
    for event in report.events:
        print(f"  event: {event}")
    in_threads = loops // 2
    for where, ran in (("main thread", loops - in_threads), ("threads", in_threads)):
        reported, no_ratio = short_seen[where]
        print(f"  short-lived loops in the {where}: {reported:,} of {ran:,} blocks reported, "
              f"{no_ratio:,} without a CPU ratio")

    warm, last = rows[0], rows[-1]
    (owners_warm, lines_warm), (owners_last, lines_last) = owned
    growth = {who: owners_last[who] - owners_warm[who] for who in owners_last}
    print(f"\ntraced memory after warm-up (round 1 -> {ROUNDS}), by who allocated it:")
    for who, bytes_ in growth.items():
        print(f"  {who:<14} {kib(bytes_):>12}")
    if args.top:
        by_line = {key: lines_last.get(key, 0) - lines_warm.get(key, 0)
                   for key in lines_warm.keys() | lines_last.keys()}
        print(f"lines whose traced memory grew most (top {args.top}):")
        for (who, file, line), bytes_ in sorted(by_line.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {kib(bytes_):>12}  {file}:{line} ({who})")
    grown = growth["loopwatch"] + growth["benchmark"]
    grown_rss = (last[4] - warm[4]) if last[4] is not None and warm[4] is not None else None
    blocks_after = last[0] - warm[0]
    per_k = grown / (blocks_after / 1000)
    print(f"\nafter warm-up (round 1 -> {ROUNDS}): traced {kib(last[2] - warm[2])} in all, "
          f"{kib(grown)} by loopwatch and the benchmark ({per_k:+,.0f} B per 1k blocks), RSS "
          f"{kib(grown_rss) if grown_rss is not None else '?'}, "
          f"over {blocks_after:,} blocks and {last[1] - warm[1]:,} iterations")
    larger = [f"{name} {warm[6][name]:,} -> {value:,}" for name, value in last[6].items()
              if value > warm[6][name] and name != "dropped"]
    print("structures larger at the end than after warm-up: " + (", ".join(larger) or "none"))
    if grown < FLAT:
        print(f"flat after warm-up: {kib(grown)} over {blocks_after:,} blocks "
              f"(loopwatch and the benchmark; under the {FLAT >> 10:,} KiB allowance)")
        return 0
    print(f"GROWS: {kib(grown)} over {blocks_after:,} blocks ({per_k:+,.0f} B per 1k blocks)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
