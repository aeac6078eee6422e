"""Stalls: an iteration long only because the machine did not run the loop's thread.

A process stopped by SIGSTOP (as a frozen container or a paused VM is), and a
loop thread that a real-time busy loop keeps off its CPU, each make iterations
far over the threshold while the program itself did nothing wrong. They are
stalls, with their cause, and never blocks. The programs run under
``loopwatch run`` as a user would run them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemas
from workloads import COMPUTE_IN_STEPS

from loopwatch._core.assemble import Observed, Reading, stall, verdict
from loopwatch.model import Frame
from loopwatch.stacks import UserCode

BUSY_PROGRAM = """
import os, sys
{compute_in_steps}
{prepare}

async def main(seconds):
    print("ready", flush=True)
    await compute_in_steps(seconds, {each_step})

asyncio.run(main(float(sys.argv[1])))
{after}
"""


def run_busy(tmp_path: Path, seconds: float, prepare: str = "", each_step: str = "lambda: None",
             after: str = "") -> subprocess.Popen[str]:
    """Run a program computing in steps (see workloads.compute_in_steps) under loopwatch run;
    ``each_step``: what it calls after each step (defined in ``prepare``)."""
    program = tmp_path / "busy.py"
    program.write_text(BUSY_PROGRAM.format(
        compute_in_steps=COMPUTE_IN_STEPS, prepare=prepare, each_step=each_step, after=after))
    process = subprocess.Popen(
        [sys.executable, "-m", "loopwatch", "run", "--threshold", "0.05", "--json", "out.json",
         "busy.py", str(seconds)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def finish(process: subprocess.Popen[str], tmp_path: Path) -> tuple[dict[str, Any], str]:
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return schemas.read(tmp_path / "out.json"), stderr


def test_a_stopped_process_is_a_stall_not_a_block(tmp_path: Path) -> None:
    """Stopped twice for 200 ms mid-computation: one paused stall per stop, no block.

    The loop lets go of the GIL only for moments, every 2 ms (select between
    steps): the watchdog waiting for it would be kept away for seconds, and
    see neither stop, unless the loop lets it in (see ``wakeup.Due``).
    """
    process = run_busy(tmp_path, seconds=2.5)
    time.sleep(0.4)
    stops = []
    for _ in range(2):
        stops.append(time.time())
        os.kill(process.pid, signal.SIGSTOP)
        time.sleep(0.2)
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.6)
    report, stderr = finish(process, tmp_path)

    def over(stop: float, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [f for f in found
                if f["started"] < stop + 0.2 and f["started"] + f["duration"] > stop]

    assert report["blocks"] == [], stderr
    for stop in stops:
        stalls = over(stop, report["stalls"])
        assert len(stalls) == 1, (stop, report["stalls"])
        assert stalls[0]["pid"] == process.pid
        assert stalls[0]["cause"] == "paused", stalls
        assert stalls[0]["paused"] > 0.1, stalls
    assert "not your code" in stderr


def _can_run_realtime() -> str | None:
    if not hasattr(os, "SCHED_FIFO") or not hasattr(os, "sched_setaffinity"):
        return "needs Linux scheduling calls (SCHED_FIFO, sched_setaffinity)"
    probe = subprocess.run(
        [sys.executable, "-c",
         "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return "a SCHED_FIFO process cannot be made here (needs root, or CAP_SYS_NICE)"
    return None


#: Runs at real-time priority on CPU 0, taking that CPU for 150 ms at each byte it reads.
HOG = """
import os, sys, time
os.sched_setaffinity(0, {0})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
print("ok", flush=True)
while sys.stdin.buffer.read(1):
    end = time.monotonic() + 0.15
    while time.monotonic() < end:
        pass
"""


@pytest.mark.skipif(_can_run_realtime() is not None, reason=str(_can_run_realtime()))
def test_a_starved_loop_thread_is_a_stall_not_a_block(tmp_path: Path) -> None:
    """Kept off its CPU three times for 150 ms by a real-time busy loop: stalls, no block."""
    # The hog starts and ends outside the loop: waiting for it is the program's own block.
    prepare = textwrap.dedent(f"""
        import subprocess
        os.sched_setaffinity(0, {{0}})  # every thread of the program on the hog's CPU
        hog = subprocess.Popen([sys.executable, "-c", {HOG!r}],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hog.stdout.readline()
        runs, due = 0, time.monotonic() + 0.4

        def hog_now_and_then():
            global runs, due
            if runs < 3 and time.monotonic() > due:
                hog.stdin.write(b"x"); hog.stdin.flush()
                runs, due = runs + 1, due + 0.5
    """)
    process = run_busy(tmp_path, seconds=2.5, prepare=prepare, each_step="hog_now_and_then",
                       after="hog.stdin.close(); hog.wait()")
    report, stderr = finish(process, tmp_path)
    assert report["blocks"] == [], stderr
    # Three stalls of the hog's making; on a busy machine, other processes may
    # keep the loop off its CPU too: more stalls, never a block.
    starved = [s for s in report["stalls"] if s["duration"] > 0.12]
    assert len(starved) >= 3, report["stalls"]
    for each in starved:
        assert each["cause"] == "starved", each
        assert each["queued"] > 0.1, each


def test_a_starved_iteration_is_a_stall_with_its_run_queue_time() -> None:
    """Pure decision: 160 ms long, 150 ms of it waiting for a CPU: a stall, not a block."""
    seen = Observed(start=1.0, end=1.16, before=Reading(0.99, (0.5, 2.0)), cpu_end=(0.51, 2.15))
    assert verdict(seen, threshold=0.05, site_threshold=0.02) == "stall"
    found = stall(seen, loop="L", user_code=UserCode(), wall_offset=100.0)
    assert (found.cause, found.started) == ("starved", 101.0)
    assert found.queued == pytest.approx(0.15)
    assert found.busy == pytest.approx(0.01)


def test_a_partly_starved_block_stays_a_block() -> None:
    """120 ms of its own work and 40 ms waiting for a CPU: a block, which says 40 ms were lost."""
    from loopwatch._core.assemble import block

    seen = Observed(start=1.0, end=1.16, before=Reading(0.99, (0.5, 2.0)), cpu_end=(0.62, 2.04))
    assert verdict(seen, threshold=0.05, site_threshold=0.02) == "block"
    found = block(seen, block_id=1, loop="L", user_code=UserCode(), wall_offset=0.0)
    assert found.stalled == pytest.approx(0.04)
    assert found.kind == "cpu"  # 120 ms of CPU in the 120 ms it could run


def test_a_paused_iteration_is_a_stall() -> None:
    """Most of the iteration the whole process did not run: cause paused."""
    seen = Observed(start=1.0, end=1.21, before=Reading(0.99, (0.5, 2.0)), cpu_end=(0.51, 2.001),
                    paused=0.2)
    assert verdict(seen, threshold=0.05, site_threshold=0.02) == "stall"
    found = stall(seen, loop="L", user_code=UserCode(), wall_offset=0.0)
    assert found.cause == "paused"
    assert found.paused == pytest.approx(0.2)


def test_throttled_when_the_cgroup_ran_out_of_quota() -> None:
    """Run-queue time that the cgroup's throttling accounts for: cause throttled."""
    seen = Observed(start=1.0, end=1.16, before=Reading(0.99, (0.5, 2.0)), cpu_end=(0.51, 2.15),
                    throttled=0.1)
    assert verdict(seen, threshold=0.05, site_threshold=0.02) == "stall"
    found = stall(seen, loop="L", user_code=UserCode(), wall_offset=0.0)
    assert found.cause == "throttled"


def test_the_verdict_of_an_iteration_the_watchdog_never_saw_run() -> None:
    """160 ms, 90 ms of it waiting for a CPU: its own 70 ms are over the threshold, but
    with not one sample it is a stall (the watchdog was kept off the CPU with it); the
    same iteration sampled running is a block."""
    frame = Frame("app.py", 3, "handler")
    unseen = Observed(start=1.0, end=1.16, before=Reading(0.99, (0.5, 2.0)),
                      cpu_end=(0.57, 2.09))
    assert verdict(unseen, threshold=0.05, site_threshold=0.02) == "stall"
    sampled = replace(unseen, stacks={(frame,): 3})
    assert verdict(sampled, threshold=0.05, site_threshold=0.02) == "block"


def test_the_verdict_under_the_threshold() -> None:
    """30 ms, over the 20 ms site threshold: a cut if 20 ms of it were its own."""
    own = Observed(start=1.0, end=1.03, before=Reading(0.99, (0.5, 2.0)), cpu_end=(0.525, 2.005))
    assert verdict(own, threshold=0.05, site_threshold=0.02) == "cut"
    starved = replace(own, cpu_end=(0.51, 2.015))
    assert verdict(starved, threshold=0.05, site_threshold=0.02) == "none"
    short = replace(own, end=1.015)
    assert verdict(short, threshold=0.05, site_threshold=0.02) == "none"
