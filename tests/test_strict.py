"""Strict mode (watch(strict=True)): blocking calls on a loop's thread, however short."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch import BlockingCall

HERE = os.path.abspath(__file__)


def strict_calls(main: Callable[[], Coroutine[Any, Any, None]]) -> list[BlockingCall]:
    with loopwatch.watch(threshold=0.5, strict=True) as session:
        asyncio.run(main())
    return list(session.report().calls)


def line_of(text: str) -> str:
    lines = Path(HERE).read_text().splitlines()
    return f"{HERE}:{next(i for i, line in enumerate(lines, 1) if text in line)}"


@pytest.fixture
def local_server() -> Iterator[int]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


def test_each_kind_of_blocking_call_is_found_at_its_line(
    tmp_path: Path, local_server: int
) -> None:
    def helper_deep_in_sync_code() -> None:
        os.listdir(tmp_path)  # strict: deep

    async def main() -> None:
        time.sleep(0.001)  # strict: sleep
        (tmp_path / "f.txt").write_text("x")  # strict: write
        with open(tmp_path / "f.txt") as handle:  # strict: open
            handle.read()
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # strict: subprocess
        sqlite3.connect(tmp_path / "db.sqlite").close()  # strict: sqlite
        socket.create_connection(("127.0.0.1", local_server)).close()  # strict: socket
        urllib.request.urlopen(f"http://127.0.0.1:{local_server}/").read()  # strict: urlopen
        helper_deep_in_sync_code()
        await asyncio.sleep(0)

    calls = strict_calls(main)
    found = {(c.call, c.site) for c in calls}
    expected = {
        ("time.sleep", line_of("# strict: sleep")),
        ("open", line_of("# strict: write")),
        ("open", line_of("# strict: open")),
        ("subprocess.Popen", line_of("# strict: subprocess")),
        ("sqlite3.connect", line_of("# strict: sqlite")),
        ("socket.connect", line_of("# strict: socket")),
        ("urllib.request.urlopen", line_of("# strict: urlopen")),
        ("os.listdir", line_of("# strict: deep")),
    }
    assert expected <= found, expected - found
    assert all(c.task and c.thread == "MainThread" and c.frames for c in calls)


def test_a_blocking_callback_is_found_and_nothing_hangs() -> None:
    def callback(done: asyncio.Future[None]) -> None:
        time.sleep(0.001)  # strict: callback
        done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(callback, done)
        await done

    (call,) = [c for c in strict_calls(main) if c.call == "time.sleep"]
    assert call.site == line_of("# strict: callback") and call.task is None


def test_what_does_not_block_the_loop_is_not_a_finding(tmp_path: Path) -> None:
    def elsewhere() -> None:
        (tmp_path / "other.txt").write_text("written by another thread")

    async def main() -> None:
        await asyncio.sleep(0.001)
        await asyncio.to_thread(time.sleep, 0.001)
        await asyncio.get_running_loop().run_in_executor(None, elsewhere)
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await process.wait()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        server.close()
        await server.wait_closed()
        import colorsys  # noqa: F401  an import reads files: not the program's blocking
        logging.getLogger("strict-test").debug("logging is not a finding")
        sum(range(10_000))  # short CPU work

    calls = strict_calls(main)
    assert calls == [], [(c.call, c.site) for c in calls]


def test_no_loop_running_no_finding(tmp_path: Path) -> None:
    with loopwatch.watch(threshold=0.5, strict=True) as session:
        time.sleep(0.001)
        (tmp_path / "f.txt").write_text("x")
    assert session.report().calls == ()


def test_strict_off_records_nothing_and_time_sleep_is_restored() -> None:
    sleep = time.sleep

    async def main() -> None:
        time.sleep(0.001)

    with loopwatch.watch(threshold=0.5) as session:
        asyncio.run(main())
    assert session.report().calls == ()
    with loopwatch.watch(threshold=0.5, strict=True):
        pass
    assert time.sleep is sleep


def test_calls_go_to_json_and_back(tmp_path: Path) -> None:
    async def main() -> None:
        time.sleep(0.001)  # strict: json

    with loopwatch.watch(threshold=0.5, strict=True) as session:
        asyncio.run(main())
    report = session.report()
    path = tmp_path / "out.json"
    report.save(path)
    again = loopwatch.Report.load(path)
    assert again.calls == report.calls and again.calls[0].site == line_of("# strict: json")


def test_wrappers_are_removed_and_locks_made_meanwhile_keep_working() -> None:
    """After the last strict session: the originals are back; its locks still lock."""
    originals = (os.stat, os.fsync, socket.socket.recv, threading.Lock, threading.RLock,
                 threading.Condition.wait, threading.Thread.join)
    results: list[Any] = []

    async def main() -> None:
        lock, rlock = threading.Lock(), threading.RLock()
        condition = threading.Condition(rlock)
        results.extend([lock, rlock])

        def notify_later() -> None:
            with condition:
                condition.notify_all()

        with condition:  # a wrapped RLock under a Condition: wait releases it, notify wakes it
            threading.Timer(0.02, notify_later).start()
            assert condition.wait(timeout=10)
        await asyncio.sleep(0)

    with loopwatch.watch(threshold=0.5, strict=True) as session:
        asyncio.run(main())
    assert (os.stat, os.fsync, socket.socket.recv, threading.Lock, threading.RLock,
            threading.Condition.wait, threading.Thread.join) == originals
    assert [c.call for c in session.report().calls] == ["threading.Condition.wait"]
    lock, rlock = results
    assert lock.acquire(timeout=1) and lock.locked()
    lock.release()
    with rlock, rlock:
        pass


def test_a_lock_only_counts_when_it_has_to_wait() -> None:
    """A free lock is no finding; one held by another thread is, at the line that waited."""

    async def main() -> None:
        lock = threading.Lock()
        with lock:
            pass  # free: no finding
        taken, release = threading.Event(), threading.Event()

        def hold() -> None:
            with lock:
                taken.set()
                release.wait(10)

        threading.Thread(target=hold).start()
        await asyncio.to_thread(taken.wait, 10)
        threading.Timer(0.02, release.set).start()
        lock.acquire()  # strict: contended
        lock.release()

    calls = strict_calls(main)
    assert [(c.call, c.site) for c in calls] == [
        ("threading.Lock.acquire", line_of("# strict: contended"))
    ]


def test_what_only_looks_like_blocking_is_not_a_finding() -> None:
    """An in-memory SQLite database; asyncio's debug mode reading source lines for its
    tracebacks (linecache stats files on every call_soon and create_task)."""

    async def main() -> None:
        sqlite3.connect(":memory:").close()
        sqlite3.connect("file:shared?mode=memory&cache=shared", uri=True).close()
        for _ in range(20):
            await asyncio.create_task(asyncio.sleep(0))

    with loopwatch.watch(threshold=0.5, strict=True) as session:
        asyncio.run(main(), debug=True)
    assert session.report().calls == ()


def test_a_wait_is_named_after_what_the_program_called() -> None:
    """Leaving `with ThreadPoolExecutor()` joins its threads: named after shutdown."""

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # strict: shutdown
            pool.submit(time.sleep, 0.02)

    calls = strict_calls(main)
    assert [(c.call, c.site) for c in calls] == [
        ("concurrent.futures.thread.ThreadPoolExecutor.shutdown", line_of("# strict: shutdown"))
    ]
