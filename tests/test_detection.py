"""Detection: every kind of blocking call is found once, at its line, with its length and kind.

Each test blocks a real event loop for about 150 ms (threshold 50 ms) and checks
the block loopwatch reports against what the test measured itself.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from workloads import (
    BLOCK,
    CATASTROPHIC,
    THRESHOLD,
    Stopwatch,
    dirty_backlog,
    json_blob,
    list_size,
    marked,
    pbkdf2_rounds,
    regex_subject,
)

import loopwatch
from loopwatch import Block

HERE = os.path.abspath(__file__)


def watch_run(main: Callable[[], Coroutine[Any, Any, None]], **options: Any) -> list[Block]:
    with loopwatch.watch(threshold=THRESHOLD, **options) as session:
        asyncio.run(main())
    return session.report().blocks  # type: ignore[return-value]


def assert_one_block(
    blocks: list[Block] | tuple[Block, ...], tag: str, watch: Stopwatch, kind: str
) -> Block:
    assert len(blocks) == 1, [f"{b.duration:.3f}s at {b.site}" for b in blocks]
    block = blocks[0]
    assert block.site == marked(HERE, tag), block.stacks
    assert block.duration == pytest.approx(watch.elapsed, rel=0.10)
    assert block.cpu_ratio is not None
    if kind == "cpu":
        assert block.cpu_ratio >= 0.8
    else:
        assert block.cpu_ratio <= 0.2
    assert block.kind == kind
    return block


# -- waiting --------------------------------------------------------------------------


def test_sleep_in_coroutine() -> None:
    """A time.sleep in a coroutine is one wait block at the sleep line, in its task."""
    watch = Stopwatch()

    async def main() -> None:
        await asyncio.sleep(0)
        with watch:
            time.sleep(BLOCK)  # block: sleep
        await asyncio.sleep(0)

    blocks = watch_run(main)
    block = assert_one_block(blocks, "sleep", watch, "wait")
    assert block.task is not None and block.task.startswith("Task-")
    assert block.coroutine is not None and "main" in block.coroutine
    assert block.frames[-1].function == "main"


def _deepest(seconds: float) -> None:
    time.sleep(seconds)  # block: deep


def _middle(seconds: float) -> None:
    _deepest(seconds)


def test_sleep_deep_in_call_chain() -> None:
    """The site is the innermost user frame, and the stack shows the chain above it."""
    watch = Stopwatch()

    async def handler() -> None:
        with watch:
            _middle(BLOCK)

    async def main() -> None:
        await asyncio.create_task(handler(), name="handler")

    (block,) = watch_run(main)
    assert_one_block([block], "deep", watch, "wait")
    functions = [frame.function for frame in block.frames]
    assert functions[-3:] == ["handler", "_middle", "_deepest"]
    assert block.task == "handler"


def test_socket_recv() -> None:
    """A synchronous socket read waiting for data is a wait block at the recv line."""
    left, right = socket.socketpair()
    sender = threading.Timer(BLOCK, right.sendall, args=(b"hello",))
    watch = Stopwatch()

    async def main() -> None:
        sender.start()
        with watch:
            left.recv(16)  # block: recv

    try:
        blocks = watch_run(main)
    finally:
        sender.join()
        left.close()
        right.close()
    assert_one_block(blocks, "recv", watch, "wait")


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(BLOCK)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_request(slow_server: str) -> None:
    """A synchronous HTTP request to a slow server is a wait block at the urlopen line."""
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            urllib.request.urlopen(slow_server).close()  # block: http

    assert_one_block(watch_run(main), "http", watch, "wait")


def test_subprocess_run() -> None:
    """Waiting for a child process is a wait block at the subprocess.run line."""
    watch = Stopwatch()
    command = [sys.executable, "-c", f"import time; time.sleep({BLOCK})"]

    async def main() -> None:
        with watch:
            subprocess.run(command, check=True)  # block: subprocess

    assert_one_block(watch_run(main), "subprocess", watch, "wait")


def test_threading_lock() -> None:
    """Waiting on a threading.Lock held by another thread is a wait block at acquire()."""
    lock = threading.Lock()
    held = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            time.sleep(BLOCK)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            lock.acquire()  # block: lock
        lock.release()

    try:
        blocks = watch_run(main)
    finally:
        thread.join()
    assert_one_block(blocks, "lock", watch, "wait")


def test_file_write_and_fsync(tmp_path: Any) -> None:
    """A file write followed by an fsync that waits for the disk is a wait block at fsync."""
    path = str(tmp_path / "journal.log")
    dirty_backlog(path)
    watch = Stopwatch()

    async def main() -> None:
        with watch, open(path, "ab") as journal:
            journal.write(b"one more line\n")
            journal.flush()
            os.fsync(journal.fileno())  # block: fsync

    blocks = watch_run(main)
    # The kernel flushes the pages in the calling thread's time: on the project's VM
    # the fsync itself spends 11-19% of its time on the CPU (time.thread_time around
    # it), so its ratio sits at the wait/mixed boundary (0.2); what matters is that it
    # is found, timed and not taken for computing.
    assert len(blocks) == 1, [f"{b.duration:.3f}s at {b.site}" for b in blocks]
    (block,) = blocks
    assert block.site == marked(HERE, "fsync"), block.stacks
    assert block.duration == pytest.approx(watch.elapsed, rel=0.10)
    assert block.cpu_ratio is not None and block.cpu_ratio <= 0.35
    assert block.kind in ("wait", "mixed")


# -- computing --------------------------------------------------------------------------


def test_pure_python_cpu() -> None:
    """Pure-Python computation is a CPU block at the computing line."""
    n = list_size()
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            sum([i * i for i in range(n)])  # block: cpu

    assert_one_block(watch_run(main), "cpu", watch, "cpu")


def test_pbkdf2_releases_the_gil() -> None:
    """hashlib.pbkdf2_hmac computes with the GIL released: a CPU block at its line."""
    rounds = pbkdf2_rounds()
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            hashlib.pbkdf2_hmac("sha256", b"password", b"salt", rounds)  # block: pbkdf2

    block = assert_one_block(watch_run(main), "pbkdf2", watch, "cpu")
    assert block.source == "sampled"


def without_unseen_aftermath(blocks: list[Block]) -> list[Block]:
    """The blocks, less any in the iteration right after the first with nothing seen in it.

    After a stall (the watchdog could not run while a C call held the GIL) the
    loop is timed on every iteration for a while. About once in 30 runs on
    3.13 the very next iteration, 50-70 ms, is reported too, with no sample,
    no stack, no GC pause: an open question (loopwatch's own catching-up after
    the stall, or the freeing of what the call made?), not the call under test.
    """
    if not blocks:
        return blocks
    first = blocks[0]
    after = first.started + first.duration
    return [first] + [
        b for b in blocks[1:]
        if not (b.samples == 0 and b.site is None and abs(b.started - after) < 0.005)
    ]


@pytest.mark.parametrize("deadman", [False, True], ids=["sampled", "deadman"])
def test_json_loads_holds_the_gil(deadman: bool) -> None:
    """A big json.loads holds the GIL throughout, and is still found at its line.

    Without the deadman switch the line comes from the sample taken as the call
    returns; with it, from faulthandler's dump taken during the call.
    """
    blob = json_blob()
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            json.loads(blob)  # block: json

    # A big parse also sets off the garbage collector, often for most of the
    # block (a block of kind "gc" then, tested apart): here only the GIL matters.
    gc.disable()
    try:
        blocks = without_unseen_aftermath(watch_run(main, deadman=deadman))
    finally:
        gc.enable()
    block = assert_one_block(blocks, "json", watch, "cpu")
    assert block.source == ("deadman" if deadman else "sampled")


@pytest.mark.parametrize("deadman", [False, True], ids=["sampled", "deadman"])
def test_catastrophic_regex_holds_the_gil(deadman: bool) -> None:
    """Catastrophic regex backtracking holds the GIL, and is still found at its line."""
    subject = regex_subject()
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            CATASTROPHIC.match(subject)  # block: regex

    blocks = without_unseen_aftermath(watch_run(main, deadman=deadman))
    block = assert_one_block(blocks, "regex", watch, "cpu")
    assert block.source == ("deadman" if deadman else "sampled")


# -- where the block happens --------------------------------------------------------------


def test_plain_call_soon_callback() -> None:
    """A blocking plain callback (no task) is found at its line, with no task."""
    watch = Stopwatch()

    def callback(done: asyncio.Future[None]) -> None:
        with watch:
            time.sleep(BLOCK)  # block: call_soon
        done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(callback, done)
        await done

    block = assert_one_block(watch_run(main), "call_soon", watch, "wait")
    assert block.task is None


def test_call_later_callback() -> None:
    """A blocking call_later callback is found at its line."""
    watch = Stopwatch()

    def callback(done: asyncio.Future[None]) -> None:
        with watch:
            time.sleep(BLOCK)  # block: call_later
        done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_later(0.01, callback, done)
        await done

    assert_one_block(watch_run(main), "call_later", watch, "wait")


def test_loop_in_second_thread() -> None:
    """A loop started in another thread while watching is watched too."""
    watch = Stopwatch()

    async def main() -> None:
        with watch:
            time.sleep(BLOCK)  # block: thread

    with loopwatch.watch(threshold=THRESHOLD) as session:
        thread = threading.Thread(target=asyncio.run, args=(main(),), name="worker-loop")
        thread.start()
        thread.join()
    block = assert_one_block(session.report().blocks, "thread", watch, "wait")
    assert "worker-loop" in block.loop


def test_loop_already_running_in_another_thread() -> None:
    """A loop that was running before watch() began is found and watched."""
    started = threading.Event()
    go = threading.Event()
    watch = Stopwatch()

    async def main() -> None:
        started.set()
        while not go.is_set():
            await asyncio.sleep(0.005)
        with watch:
            time.sleep(BLOCK)  # block: running

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    started.wait()
    with loopwatch.watch(threshold=THRESHOLD) as session:
        go.set()
        thread.join()
    assert_one_block(session.report().blocks, "running", watch, "wait")


def test_uvloop() -> None:
    """uvloop loops are watched by heartbeat: the block has its line and a close duration."""
    uvloop = pytest.importorskip("uvloop")
    watch = Stopwatch()

    async def main() -> None:
        await asyncio.sleep(0.05)
        with watch:
            time.sleep(BLOCK)  # block: uvloop
        await asyncio.sleep(0.05)

    with loopwatch.watch(threshold=THRESHOLD) as session:
        uvloop.run(main())
    block = assert_one_block(session.report().blocks, "uvloop", watch, "wait")
    assert block.task is not None and block.task.startswith("Task-")
    assert block.resolution == "heartbeat"


def test_several_loops_at_once() -> None:
    """Two loops blocking at the same time in two threads give one block each."""
    barrier = threading.Barrier(2)
    watches = [Stopwatch(), Stopwatch()]

    async def main(index: int) -> None:
        barrier.wait()
        with watches[index]:
            time.sleep(BLOCK)  # block: parallel

    with loopwatch.watch(threshold=THRESHOLD) as session:
        threads = [threading.Thread(target=asyncio.run, args=(main(i),)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    blocks = session.report().blocks
    assert len(blocks) == 2
    assert len({b.loop for b in blocks}) == 2
    for block in blocks:
        assert block.site == marked(HERE, "parallel")
        assert block.kind == "wait"
        assert block.coroutine is not None and "main" in block.coroutine
    # each loop's own task, read from the watchdog thread (3.14 keeps it per thread)
    assert len({b.task for b in blocks}) == 2 and None not in {b.task for b in blocks}


# -- what is not a block ------------------------------------------------------------------


@pytest.fixture
def small_heap() -> Iterator[None]:
    """Keep full garbage collections short: the test process's own heap is not on trial.

    A full collection of a big process (pytest and everything it imported) can
    take 80 ms on a slow machine, and loopwatch rightly reports that as a
    block ("mostly a garbage-collection pause"); these tests are about the
    program's own callbacks.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()



@pytest.mark.usefixtures("small_heap")
def test_many_tiny_callbacks_are_not_blocks() -> None:
    """100k quick callbacks, one per iteration, report nothing."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = 100_000

        def step() -> None:
            nonlocal left
            left -= 1
            if left:
                loop.call_soon(step)
            else:
                done.set_result(None)

        loop.call_soon(step)
        await done

    assert not watch_run(main)


@pytest.mark.usefixtures("small_heap")
def test_many_sleeping_tasks_are_not_blocks() -> None:
    """2000 tasks yielding 20 times each report nothing."""

    async def worker() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def main() -> None:
        tasks = []
        for _ in range(20):  # started a hundred at a time, as a server accepts them
            tasks += [asyncio.create_task(worker()) for _ in range(100)]
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    assert not watch_run(main)


@pytest.mark.usefixtures("small_heap")
def test_loopback_echo_is_not_a_block() -> None:
    """2000 TCP echo round trips over loopback report nothing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2000):
            writer.write(b"ping")
            await writer.drain()
            assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    assert not watch_run(main)


@pytest.mark.parametrize("precise", [False, True], ids=["sampled", "every-iteration"])
def test_stopped_loop_beside_a_running_one_on_the_same_thread(precise: bool) -> None:
    """A stopped loop does not take over another loop's iteration on its thread.

    Reported once, for the loop that ran it (pytest-asyncio keeps a module-scoped
    loop stopped beside each test's loop), whether iterations are found by
    sampling or timed one by one.
    """
    watch = Stopwatch()

    async def quick() -> None:
        await asyncio.sleep(0)

    async def slow() -> None:
        with watch:
            time.sleep(BLOCK)  # block: other loop

    with loopwatch.watch(threshold=THRESHOLD, precise=precise) as session:
        kept = asyncio.new_event_loop()  # like pytest-asyncio's module-scoped loop
        try:
            kept.run_until_complete(quick())
            asyncio.run(slow())
            time.sleep(0.1)  # the kept loop is stopped meanwhile: not a block
            kept.run_until_complete(quick())
        finally:
            kept.close()
    assert_one_block(session.report().blocks, "other loop", watch, "wait")
