"""What strict mode's audit hook costs, on and off.

    python benchmarks/strict_hook.py [--rounds 7]

An audit hook cannot be removed: once a session has used strict mode, every
audit event in the process goes through loopwatch's hook for good. Each mode
runs in a fresh interpreter, interleaved round by round:

* ``no hook``: loopwatch never used strict mode;
* ``hook off``: a strict session ran and ended (the hook stays, no session wants it);
* ``strict, no loop``: a strict session is running, no event loop in this thread.

Two workloads: ``sys._getframe()`` (an audit event loopwatch ignores, the
commonest kind: logging raises it for every record) and ``open``/``close`` of
``/dev/null`` (an event it looks at). Reported: nanoseconds per operation, best
and median, and the difference from ``no hook``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("no hook", "hook off", "strict, no loop")
WORKLOADS = {"sys._getframe()": 1_000_000, "open+close /dev/null": 100_000}


def _measure(workload: str, count: int) -> float:
    if workload == "sys._getframe()":
        getframe = sys._getframe
        start = time.perf_counter()
        for _ in range(count):
            getframe()
        return (time.perf_counter() - start) / count
    start = time.perf_counter()
    for _ in range(count):
        open(os.devnull).close()
    return (time.perf_counter() - start) / count


def _child(mode: str) -> dict[str, float]:
    import loopwatch

    session = None
    if mode == "hook off":
        with loopwatch.watch(strict=True):
            pass
    elif mode == "strict, no loop":
        session = loopwatch.watch(strict=True).start()
    try:
        return {name: _measure(name, count) for name, count in WORKLOADS.items()}
    finally:
        if session is not None:
            session.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", mode],
                                 capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout))
    print(f"nanoseconds per operation, {args.rounds} rounds (best / median)")
    print(f"{'mode':<17}" + "".join(f"{name:>30}" for name in WORKLOADS))
    base = {name: min(r[name] for r in runs["no hook"]) for name in WORKLOADS}
    for mode in MODES:
        cells = []
        for name in WORKLOADS:
            values = [r[name] * 1e9 for r in runs[mode]]
            delta = min(values) - base[name] * 1e9
            cells.append(f"{min(values):>8.0f} / {statistics.median(values):<6.0f} "
                         f"({delta:+6.0f})")
        print(f"{mode:<17}" + "".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
