"""loopwatch across processes: os.fork, and multiprocessing's fork, forkserver and spawn.

What a user can expect (and what these tests hold loopwatch to):

* A child forked while watching neither hangs nor crashes. Its sessions carry
  on in the child: each is the child's copy, holding what the parent had found
  before the fork, and it records the child's own blocks from then on. A fresh
  ``watch()`` in the child works as it does anywhere.
* A loop that was running at fork time (``fork()`` called from a callback)
  stays the parent's: asyncio does not run it in the child, so it is not
  watched there.
* The parent keeps watching as if nothing happened.
* Forking while not watching leaves the child exactly as it would be without
  loopwatch.

Each child sends its result back through a pipe; a child that has not answered
within a generous deadline is killed and the test fails as "hung".
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import json
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import pytest
from workloads import BLOCK, THRESHOLD, Stopwatch, list_size, marked

import loopwatch
from loopwatch import Block, Config, Report
from loopwatch import watchdog as watchdog_module
from loopwatch._core import dispatch as dispatch_module
from loopwatch._core.findings import Found
from loopwatch.watchdog import WATCHDOG

HERE = os.path.abspath(__file__)

#: Seconds a child may take to answer before it counts as hung (it needs well under one).
CHILD_DEADLINE = 20.0

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns about forking a process that has threads; here the
    # watchdog thread is there on purpose: surviving that fork is the point.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


# -- workloads (module level: spawn and forkserver children import them by name) ----------


async def _parent_blocks() -> None:
    await asyncio.sleep(0)
    time.sleep(BLOCK)  # block: parent
    await asyncio.sleep(0)


async def _child_sleeps() -> None:
    await asyncio.sleep(0)
    time.sleep(BLOCK)  # block: child-sleep
    await asyncio.sleep(0)


def _child_cpu_block(n: int, watch: Stopwatch) -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        with watch:
            sum([i * i for i in range(n)])  # block: child-cpu
        await asyncio.sleep(0)

    asyncio.run(main())


def _watch_a_blocking_loop(**options: Any) -> dict[str, Any]:
    """In a child: a fresh watch() around a loop that blocks once, as a report dict."""
    with loopwatch.watch(threshold=THRESHOLD, **options) as session:
        asyncio.run(_child_sleeps())
    return session.report().to_dict()


def _mp_child(conn: Connection) -> None:
    """multiprocessing target: send back the report of a watched, blocking loop (or the error)."""
    try:
        conn.send({"report": _watch_a_blocking_loop()})
    except BaseException:
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


# -- running a child -------------------------------------------------------------------


def _reap(pid: int, kill: bool) -> None:
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)


def in_fork(body: Callable[[], Any], deadline: float = CHILD_DEADLINE) -> Any:
    """Run ``body()`` in a child made by os.fork(); return its (JSON) result or fail."""
    return answer_of(*fork(body), deadline=deadline)


def fork(body: Callable[[], Any]) -> tuple[int, int]:
    """Start ``body()`` in a forked child; (pid, fd to read its answer from)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_fd)
            try:
                result: dict[str, Any] = {"result": body()}
            except BaseException:
                result = {"error": traceback.format_exc()}
            with os.fdopen(write_fd, "w") as out:
                json.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def answer_of(pid: int, read_fd: int, deadline: float = CHILD_DEADLINE) -> Any:
    """What the child ``fork()`` started answered; fails if it hung, died or raised."""
    chunks: list[bytes] = []
    hung = True
    try:
        end = time.monotonic() + deadline
        while (left := end - time.monotonic()) > 0:
            if not select.select([read_fd], [], [], left)[0]:
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                hung = False
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _reap(pid, kill=hung)
    if hung:
        pytest.fail(f"the forked child did not answer within {deadline:.0f} s: it hung")
    if not chunks:
        pytest.fail("the forked child died without answering")
    answer = json.loads(b"".join(chunks))
    if "error" in answer:
        pytest.fail(f"the forked child raised:\n{answer['error']}")
    return answer["result"]


def from_child(conn: Connection, process: Any) -> Report:
    """The report a multiprocessing child sent back through ``conn``."""
    try:
        if not conn.poll(CHILD_DEADLINE):
            pytest.fail(f"the child did not answer within {CHILD_DEADLINE:.0f} s: it hung")
        answer = conn.recv()
    finally:
        process.join(CHILD_DEADLINE)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
        exitcode = process.exitcode
        process.close()  # its sentinel descriptor
    if "error" in answer:
        pytest.fail(f"the child raised:\n{answer['error']}")
    assert exitcode == 0
    return Report.from_dict(answer["report"])


def sites(blocks: Any) -> list[str | None]:
    return [b.site if isinstance(b, Block) else b["site"] for b in blocks]


# -- os.fork ---------------------------------------------------------------------------


def test_forked_child_watches_its_own_loop_and_thread() -> None:
    """A fresh watch() in a forked child finds the child's CPU-bound block, timed by its own clock.

    The parent sits idle in os.read meanwhile: a CPU clock inherited from the
    parent's thread would make this block look like a wait.
    """
    n = list_size()

    def child() -> dict[str, Any]:
        watch = Stopwatch()
        with loopwatch.watch(threshold=THRESHOLD) as session:
            _child_cpu_block(n, watch)
        return {"report": session.report().to_dict(), "elapsed": watch.elapsed}

    with loopwatch.watch(threshold=THRESHOLD) as parent:
        answer = in_fork(child)
        asyncio.run(_parent_blocks())
    (block,) = Report.from_dict(answer["report"]).blocks
    assert block.site == marked(HERE, "child-cpu")
    assert block.duration == pytest.approx(answer["elapsed"], rel=0.25)
    # An inherited clock would read the idle parent thread: near 0. On a machine whose
    # cores are all busy the child's threads also queue for the GIL, which lowers a
    # real computing ratio (seen at 0.47 beside two CPU hogs), so the bar is low.
    assert block.cpu_ratio is not None and block.cpu_ratio > 0.3, block
    # the parent went on watching, and saw only its own block
    assert sites(parent.report().blocks) == [marked(HERE, "parent")]


def test_forked_child_carries_on_the_inherited_session() -> None:
    """Without a watch() of its own, the child's copy of the session records the child's block.

    The copy also holds what the parent had found before the fork.
    """
    with loopwatch.watch(threshold=THRESHOLD) as session:
        asyncio.run(_parent_blocks())
        session.report()
        # The sinks thread announcing that block must be idle when the program forks:
        # see test_fork_while_the_sinks_thread_is_busy.
        dispatch_module.DISPATCHER.drain(session)

        def child() -> list[str | None]:
            asyncio.run(_child_sleeps())
            return sites(session.report().blocks)

        in_child = in_fork(child)
        asyncio.run(_parent_blocks())
    assert in_child == [marked(HERE, "parent"), marked(HERE, "child-sleep")]
    assert sites(session.report().blocks) == [marked(HERE, "parent")] * 2


class Subscriber:
    """Subscribed to the watchdog like a session, without a session's sinks; may be slow.

    The watchdog hands blocks to subscribers in its own thread, under its lock:
    while ``hold`` runs, that lock is held.
    """

    def __init__(self, hold: Callable[[], object] = lambda: None) -> None:
        self.config = Config(threshold=THRESHOLD)
        self.started = time.monotonic()
        self.blocks: list[Block] = []
        self.inside = threading.Event()
        self._hold = hold
        self._pid = os.getpid()

    def receive_block(self, found: Found) -> None:
        self.blocks.append(found.block)
        if os.getpid() == self._pid:  # the child's copy must not wait on the parent's test
            self.inside.set()
            self._hold()

    def receive_loop(self, stats: Any) -> None:
        pass

    def receive_event(self, message: str) -> None:
        pass

    def receive_cut(self, cut: Any) -> None:
        pass

    def receive_stall(self, stall: Any) -> None:
        pass


@contextmanager
def subscribed(subscriber: Subscriber) -> Iterator[Subscriber]:
    WATCHDOG.subscribe(subscriber)
    try:
        yield subscriber
    finally:
        WATCHDOG.unsubscribe(subscriber)


def test_blocks_that_ended_before_the_fork_reach_the_child() -> None:
    """A block that ended just before fork() is in the child's copy as well as the parent's.

    The watchdog would have passed it on at its next tick, which the child
    does not share: the fork passes it on first.
    """
    async def main() -> tuple[int, int]:
        await _parent_blocks()  # its last await ends the iteration that blocked
        return fork(lambda: sites(recorder.blocks))  # microseconds later

    with subscribed(Subscriber()) as recorder:
        in_child = answer_of(*asyncio.run(main()))
    assert in_child == [marked(HERE, "parent")]
    assert sites(recorder.blocks) == [marked(HERE, "parent")]


def test_fork_while_the_watchdog_holds_its_lock() -> None:
    """A fork while the watchdog thread holds its lock waits for it; the child is not stuck."""
    with subscribed(Subscriber(hold=lambda: time.sleep(0.2))) as slow:
        thread = threading.Thread(target=asyncio.run, args=(_parent_blocks(),))
        thread.start()
        assert slow.inside.wait(CHILD_DEADLINE)
        report = Report.from_dict(in_fork(_watch_a_blocking_loop))
        thread.join()
    assert sites(report.blocks) == [marked(HERE, "child-sleep")]


def test_fork_that_cannot_wait_for_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the watchdog keeps its lock past the fork's wait, the fork goes ahead; the child copes."""
    monkeypatch.setattr(watchdog_module, "_FORK_WAIT", 0.01)
    release = threading.Event()
    with subscribed(Subscriber(hold=lambda: release.wait(CHILD_DEADLINE))) as stuck:
        thread = threading.Thread(target=asyncio.run, args=(_parent_blocks(),))
        thread.start()
        assert stuck.inside.wait(CHILD_DEADLINE)
        try:
            report = Report.from_dict(in_fork(_watch_a_blocking_loop))
        finally:
            release.set()
            thread.join()
    assert sites(report.blocks) == [marked(HERE, "child-sleep")]


def test_fork_from_a_callback_leaves_the_running_loop_to_the_parent() -> None:
    """A loop running at fork time is not watched in the child (asyncio does not run it there)."""

    def child() -> dict[str, Any]:
        with loopwatch.watch(threshold=THRESHOLD) as session:
            time.sleep(BLOCK)  # the parent's loop, frozen in this stack, "blocks"
        report = session.report()
        return {"loops": [s.loop for s in report.loops], "blocks": sites(report.blocks)}

    async def main() -> tuple[int, int]:
        await asyncio.sleep(0)
        return fork(child)  # waiting for the child here would block this loop

    with loopwatch.watch(threshold=THRESHOLD) as parent:
        started = asyncio.run(main())
        asyncio.run(_parent_blocks())
        in_child = answer_of(*started)
    assert in_child == {"loops": [], "blocks": []}
    assert sites(parent.report().blocks) == [marked(HERE, "parent")]


def test_fork_with_the_deadman_armed() -> None:
    """faulthandler's timer (the deadman) is not left armed in the child, where it would hang.

    Cancelling a timer that was armed at fork time waits forever for
    faulthandler's thread, which does not exist in the child.
    """
    loop_ready = threading.Event()
    go: list[Any] = []

    async def parent_loop() -> None:
        event = asyncio.Event()
        go.append((asyncio.get_running_loop(), event))
        loop_ready.set()
        await event.wait()  # the watchdog keeps the deadman armed meanwhile
        await _parent_blocks()

    def child() -> list[str | None]:
        faulthandler.dump_traceback_later(60)  # what pytest-timeout or a user might do
        faulthandler.cancel_dump_traceback_later()
        return sites(_watch_a_blocking_loop(deadman=True)["blocks"])

    with loopwatch.watch(threshold=THRESHOLD, deadman=True) as parent:
        thread = threading.Thread(target=asyncio.run, args=(parent_loop(),))
        thread.start()
        try:
            assert loop_ready.wait(CHILD_DEADLINE)
            time.sleep(THRESHOLD)  # a few watchdog ticks: the timer is armed
            in_child = in_fork(child)
        finally:
            loop, event = go[0]
            loop.call_soon_threadsafe(event.set)
            thread.join()
    assert in_child == [marked(HERE, "child-sleep")]
    assert sites(parent.report().blocks) == [marked(HERE, "parent")]


def test_fork_while_not_watching_changes_nothing() -> None:
    """Forking when no session runs: the child has no loopwatch thread, patch or state."""
    before = sorted(m for m in sys.modules if m.startswith("loopwatch"))
    callbacks = len(gc.callbacks)

    def child() -> dict[str, Any]:
        state = {
            "threads": [t.name for t in threading.enumerate()],
            "active": WATCHDOG.active(),
            "patched": hasattr(asyncio.BaseEventLoop.__dict__["run_forever"], "__loopwatch__"),
            "modules": sorted(m for m in sys.modules if m.startswith("loopwatch")),
            "gc_callbacks": len(gc.callbacks),
        }
        # and watching still works there
        state["blocks"] = sites(_watch_a_blocking_loop()["blocks"])
        return state

    state = in_fork(child)
    assert state == {
        "threads": [threading.current_thread().name],
        "active": False,
        "patched": False,
        "modules": before,
        "gc_callbacks": callbacks,
        "blocks": [marked(HERE, "child-sleep")],
    }


def test_on_block_runs_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_block is called for the child's block, even if the parent's sinks thread was running."""
    monkeypatch.setattr(dispatch_module, "DRAIN_TIMEOUT", 1.0)  # what a stuck dispatcher costs here

    def child() -> list[str | None]:
        got: list[Block] = []
        with loopwatch.watch(threshold=THRESHOLD, on_block=got.append):
            asyncio.run(_child_sleeps())
        return sites(got)

    with loopwatch.watch(threshold=THRESHOLD, on_block=lambda block: None):
        asyncio.run(_parent_blocks())  # starts the sinks thread
        in_child = in_fork(child)
    assert in_child == [marked(HERE, "child-sleep")]


def test_fork_while_the_sinks_thread_is_busy() -> None:
    """A fork while the dispatcher's lock is held (its thread between deliveries): no hang."""
    holding = threading.Event()
    forked = threading.Event()

    def hold() -> None:
        with dispatch_module.DISPATCHER._cond:  # as the sinks thread does, between deliveries
            holding.set()
            forked.wait(CHILD_DEADLINE)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(CHILD_DEADLINE)
        started = fork(_watch_a_blocking_loop)
    finally:
        forked.set()
        holder.join()
    # it needs well under a second; a child stuck on the lock never answers (CHILD_DEADLINE
    # tells the two apart on a busy machine too)
    assert sites(answer_of(*started)["blocks"]) == [marked(HERE, "child-sleep")]


_FORKING_PROGRAM = """
import asyncio, json, multiprocessing, os, sys, threading, time
import loopwatch

mode, own_thread = sys.argv[1], sys.argv[2] == "own-thread"
options = {
    "plain": {},
    "deadman": {"deadman": True},
    "on_block": {"on_block": lambda block: None},
    "profile": {"profile": True, "profile_duty": 0.5},
    "multiprocessing": {},
}[mode]
if own_thread:  # the program's own thread: the warning is the program's to see
    threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()

def child():
    pass

async def main():
    await asyncio.sleep(0)
    time.sleep(0.1)
    if mode == "multiprocessing":
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    time.sleep(0.25)  # block: across the fork
    if mode == "multiprocessing":
        process.join()
    else:
        os.waitpid(pid, 0)
    await asyncio.sleep(0)

with loopwatch.watch(threshold=0.05, **options) as session:
    asyncio.run(main())
    if mode == "on_block":
        asyncio.run(main())  # the sinks thread is running at this fork
print(json.dumps([[b.duration, b.site] for b in session.report().blocks]))
"""


@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="Python warns about fork() with threads from 3.12"
)
@pytest.mark.parametrize("mode", ["plain", "deadman", "on_block", "profile", "multiprocessing"])
def test_fork_warning_is_not_caused_by_loopwatch(mode: str, tmp_path: Any) -> None:
    """Forking while watched: no multi-threaded fork warning from loopwatch's own threads.

    The block that spans the fork is still found whole, at its line. A program
    that has a thread of its own still gets the warning (the check can fail).
    """
    import subprocess

    program = tmp_path / "forks.py"
    program.write_text(_FORKING_PROGRAM)
    line = marked(str(program), "across the fork")
    warning = "is multi-threaded, use of fork() may lead to deadlocks"

    def run(own_thread: bool) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-W", "always::DeprecationWarning", str(program), mode,
             "own-thread" if own_thread else "alone"],
            capture_output=True, text=True, timeout=60, check=False,
        )

    result = run(own_thread=False)
    assert result.returncode == 0, result.stderr
    assert warning not in result.stderr
    blocks = json.loads(result.stdout)
    spanning = [duration for duration, site in blocks if site == line]
    assert spanning, blocks
    assert max(spanning) >= 0.3  # 0.1 s before the fork, 0.25 s after: one block

    control = run(own_thread=True)
    assert control.returncode == 0, control.stderr
    assert warning in control.stderr


def test_fork_while_another_thread_reads_the_report() -> None:
    """A thread calls report() while the program forks: the child's report() works."""
    stop = threading.Event()

    def poll(session: loopwatch.Session) -> None:
        while not stop.is_set():
            session.report()

    with loopwatch.watch(threshold=THRESHOLD) as session:
        asyncio.run(_parent_blocks())
        poller = threading.Thread(target=poll, args=(session,))
        poller.start()
        try:
            for _ in range(3):
                # report() takes milliseconds; one stuck on a lock never returns
                assert in_fork(lambda: len(session.report().blocks)) == 1
        finally:
            stop.set()
            poller.join()


# -- multiprocessing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def start_methods() -> Iterator[list[str]]:
    """multiprocessing's helper processes, started before any test counts descriptors.

    The resource tracker and the fork server live as long as this process and
    keep a descriptor each: theirs, not a leak of loopwatch's.
    """
    methods = multiprocessing.get_all_start_methods()
    if "spawn" in methods or "forkserver" in methods:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    if "forkserver" in methods:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    yield methods


def test_multiprocessing_fork_child() -> None:
    """A multiprocessing "fork" child watches its own loop; the parent's session is undisturbed."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method here")
    ctx = multiprocessing.get_context("fork")
    with loopwatch.watch(threshold=THRESHOLD) as parent:
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_mp_child, args=(send,))
        process.start()
        send.close()
        asyncio.run(_parent_blocks())
        report = from_child(receive, process)
    assert sites(report.blocks) == [marked(HERE, "child-sleep")]
    assert sites(parent.report().blocks) == [marked(HERE, "parent")]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_fresh_interpreter_child(method: str, start_methods: list[str]) -> None:
    """A forkserver or spawn child of a watching parent runs its own watch() and finds its block."""
    if method not in start_methods:
        pytest.skip(f"no {method} start method here")
    ctx = multiprocessing.get_context(method)
    with loopwatch.watch(threshold=THRESHOLD) as parent:
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_mp_child, args=(send,))
        process.start()
        send.close()
        asyncio.run(_parent_blocks())  # while the child starts and runs
        report = from_child(receive, process)
    (block,) = report.blocks
    assert block.site == marked(HERE, "child-sleep")
    assert block.kind == "wait"
    assert sites(parent.report().blocks) == [marked(HERE, "parent")]
