"""Busy: run a command beside CPU-bound processes, the way a CI runner is busy.

A detector of blocked event loops measures time, and a test suite of it races
with everything else on the machine. On an idle laptop the suite passes; on a
shared CI runner, where other jobs hold the CPUs, threads wait to be scheduled
and tests that leaned on "this should take under N ms" or "that thread has run
by now" fail, a different one each run. This reproduces that load on purpose:

    python benchmarks/busy.py -- python -m pytest -q tests/test_detection.py
    python benchmarks/busy.py --hogs 4 --repeat 5 -- python -m pytest -q

``--hogs N`` (default 2) processes spin on the CPU from before the command starts
until after it ends; they are killed on every exit path (the command failing,
Ctrl-C, this script being killed by SIGTERM), as one process group, so none is
left spinning. ``--repeat K`` runs the command K times in a row and stops at the
first failure, saying which run it was. Exits with the command's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

# Each hog: a process that never sleeps, and dies with its parent if that one
# is killed with SIGKILL (it polls its parent now and then: no orphan spinners).
_HOG = """
import os, sys
parent = int(sys.argv[1])
n = 0
while True:
    n += 1
    if n % 1_000_000 == 0 and os.getppid() != parent:
        break
"""


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` spinning processes, all in one new process group."""
    hogs: list[subprocess.Popen[bytes]] = []
    group = 0
    for _ in range(count):
        hog = subprocess.Popen(
            [sys.executable, "-c", _HOG, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            process_group=group,
        )
        group = group or hog.pid
        hogs.append(hog)
    return hogs


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    """Kill the hogs' process group and reap each of them."""
    if not hogs:
        return
    try:
        os.killpg(hogs[0].pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for hog in hogs:
        try:
            hog.kill()
        except ProcessLookupError:
            pass
        hog.wait()


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM: unwind through the finally blocks like Ctrl-C does.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a command beside CPU-bound processes (a busy CI runner).",
        usage="%(prog)s [--hogs N] [--repeat K] -- COMMAND [ARG ...]",
    )
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the command K times, stop at the first failure"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given (put it after --)")
    if args.hogs < 0 or args.repeat < 1:
        parser.error("--hogs must be >= 0 and --repeat >= 1")

    signal.signal(signal.SIGTERM, _terminate)
    # Started in the background (`busy.py ... &` in a script), this process and so the
    # command would ignore SIGINT: tests that interrupt a child of theirs would hang.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    hogs: list[subprocess.Popen[bytes]] = []
    status = 0
    try:
        hogs = start_hogs(args.hogs)
        for run in range(1, args.repeat + 1):
            started = time.monotonic()
            status = subprocess.call(command)
            took = time.monotonic() - started
            if args.repeat > 1:
                verdict = "ok" if status == 0 else f"FAILED (status {status})"
                print(
                    f"busy: run {run} of {args.repeat} {verdict} in {took:.0f}s "
                    f"beside {args.hogs} hogs",
                    file=sys.stderr,
                    flush=True,
                )
            if status != 0:
                break
    except KeyboardInterrupt:
        status = 130
    finally:
        stop_hogs(hogs)
    return status


if __name__ == "__main__":
    sys.exit(main())
