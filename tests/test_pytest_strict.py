"""pytest --loopwatch-strict: short blocking calls on a loop's thread, the allow-list, baselines.

Generated suites run in a subprocess, as users run them. Every blocking call
here is real (a file, a socket to a server on 127.0.0.1, a subprocess, a lock
held by another thread) and far under any time threshold: only strict mode can
see them. Each line that must be found carries a ``# finding: <call>`` comment.
"""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap
from typing import Any

import pytest
import schemas

pytest_plugins = "pytester"
pytestmark = pytest.mark.usefixtures("clean_loopwatch_env")

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

SERVERS = '''
import http.server
import threading

import pytest


@pytest.fixture(scope="session")
def http_port():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
'''

BLOCKING = '''
import asyncio
import concurrent.futures
import os
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from loopwatch._core.strict import STRICT

pytestmark = pytest.mark.asyncio


#: seconds a helper thread waits for strict mode to see the call it is waiting for: only
#: ever reached if strict mode missed it (the test then fails)
WAIT = 10


def after_finding(call, then):
    """Run ``then()`` in another thread once strict mode has seen this thread make ``call``.

    Strict mode reports a wait just before it begins. What ``then()`` ends (a
    lock held, a thread alive, a queue empty) lasts until then, so the call
    does wait, however late a busy machine runs this thread; a timer could fire
    first, and the call would not wait at all. Without strict mode (the same
    suite under plain --loopwatch), ``then()`` runs at once.
    """
    if not STRICT.active:
        threading.Thread(target=then, daemon=True).start()
        return
    found = threading.Event()

    def receive(blocking_call):
        if blocking_call.call == call:
            found.set()

    def run():
        found.wait(WAIT)
        STRICT.unsubscribe(receive)
        then()

    STRICT.subscribe(receive)
    threading.Thread(target=run, daemon=True).start()


def held_until_found(lock, call):
    """Another thread holds the lock from before this returns until strict mode saw ``call``."""
    taken = threading.Event()
    release = threading.Event()

    def hold():
        with lock:
            taken.set()
            release.wait(WAIT)

    threading.Thread(target=hold, daemon=True).start()
    taken.wait()
    after_finding(call, release.set)


async def test_sleep():
    time.sleep(0.001)  # finding: time.sleep


async def test_file_write(tmp_path):
    (tmp_path / "f.txt").write_text("x")  # finding: open


async def test_file_read(tmp_path):
    path = tmp_path / "f.txt"
    await asyncio.to_thread(path.write_text, "x")
    with open(path) as handle:  # finding: open
        handle.read()


async def test_stat(tmp_path):
    os.path.exists(tmp_path / "nothing")  # finding: os.stat


async def test_listdir(tmp_path):
    os.listdir(tmp_path)  # finding: os.listdir


async def test_fsync(tmp_path):
    fd = await asyncio.to_thread(os.open, tmp_path / "g", os.O_CREAT | os.O_WRONLY)
    os.fsync(fd)  # finding: os.fsync
    await asyncio.to_thread(os.close, fd)


async def test_socket_connect(http_port):
    socket.create_connection(("127.0.0.1", http_port)).close()  # finding: socket.connect


async def test_socket_recv(http_port):
    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", http_port))
    await asyncio.to_thread(sock.sendall, b"GET / HTTP/1.0\\r\\n\\r\\n")
    sock.recv(100)  # finding: socket.socket.recv
    await asyncio.to_thread(sock.close)


async def test_urlopen(http_port):
    url = f"http://127.0.0.1:{http_port}/"
    urllib.request.urlopen(url).read()  # finding: urllib.request.urlopen


async def test_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # finding: subprocess.Popen


async def test_sqlite(tmp_path):
    sqlite3.connect(tmp_path / "db.sqlite").close()  # finding: sqlite3.connect


async def test_contended_lock():
    lock = threading.Lock()
    held_until_found(lock, "threading.Lock.acquire")
    with lock:  # finding: threading.Lock.acquire
        pass


async def test_future_result():
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(release.wait, WAIT)
        after_finding("concurrent.futures.Future.result", release.set)
        future.result()  # finding: concurrent.futures.Future.result


async def test_queue_get():
    waiting = queue.Queue()
    after_finding("queue.Queue.get", lambda: waiting.put(1))
    waiting.get()  # finding: queue.Queue.get


async def test_event_wait():
    event = threading.Event()
    after_finding("threading.Event.wait", event.set)
    event.wait()  # finding: threading.Event.wait


def sync_helper(path):
    return deeper(path)


def deeper(path):
    return os.listdir(path)  # finding: os.listdir


async def test_deep_in_sync_helpers(tmp_path):
    sync_helper(tmp_path)


async def test_in_a_callback():
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def callback():
        time.sleep(0.001)  # finding: time.sleep
        done.set_result(None)

    loop.call_soon(callback)
    await done


async def test_thread_join():
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(WAIT,))
    thread.start()
    after_finding("threading.Thread.join", release.set)
    thread.join()  # finding: threading.Thread.join
'''

NOT_BLOCKING = '''
import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.asyncio


async def test_asyncio_sleep():
    await asyncio.sleep(0.001)


async def test_streams(http_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
    await writer.drain()
    assert (await reader.read()).endswith(b"ok")
    writer.close()
    await writer.wait_closed()


async def test_loop_socket_calls(http_port):
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", http_port))
    await loop.sock_sendall(sock, b"GET / HTTP/1.0\\r\\n\\r\\n")
    await loop.sock_recv(sock, 100)
    sock.close()


async def test_to_thread_and_executor(tmp_path):
    await asyncio.to_thread(time.sleep, 0.001)
    await asyncio.get_running_loop().run_in_executor(None, (tmp_path / "f").write_text, "x")


async def test_async_subprocess():
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await process.wait()


def test_sync_test_with_no_loop(tmp_path):
    time.sleep(0.001)
    (tmp_path / "f").write_text("x")
    subprocess.run([sys.executable, "-c", "pass"], check=True)


async def test_io_in_another_thread(tmp_path):
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def work():
        (tmp_path / "f").write_text("x")
        time.sleep(0.001)
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=work).start()
    await done.wait()


async def test_short_cpu_work():
    sum(i * i for i in range(10_000))


async def test_logging(caplog):
    logging.getLogger("app").warning("hello %s", "there")
    logging.getLogger("app").info("quiet")


async def test_import(pytester_module):
    __import__(pytester_module)


async def test_asyncio_primitives():
    lock, queue, event = asyncio.Lock(), asyncio.Queue(), asyncio.Event()
    async with lock:
        await queue.put(1)
        await queue.get()
    event.set()
    await asyncio.wait_for(event.wait(), 1)
'''

IMPORTED = '''
import pytest


@pytest.fixture
def pytester_module(tmp_path, monkeypatch):
    (tmp_path / "freshly_written_module.py").write_text("VALUE = 1\\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "freshly_written_module"
'''


def suite(
    pytester: pytest.Pytester, ini: str = "", conftest: str = SERVERS, **modules: str
) -> None:
    pytester.makeini(INI + textwrap.dedent(ini))
    pytester.makeconftest(conftest)
    pytester.makepyfile(**{name: textwrap.dedent(source) for name, source in modules.items()})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:hypothesispytest", *args, timeout=120)


def expected_findings(source: str) -> dict[int, str]:
    """line -> call, from the ``# finding: <call>`` comments."""
    found = {}
    for number, text in enumerate(source.splitlines(), 1):
        match = re.search(r"# finding: (\S+)", text)
        if match:
            found[number] = match.group(1)
    return found


def calls_in(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {nodeid: calls for nodeid, calls in report["calls"].items() if calls}


def test_each_blocking_call_fails_its_test_at_its_line(pytester: pytest.Pytester) -> None:
    """Every kind of blocking call is found however short, at its line; none hangs a test."""
    suite(pytester, test_blocking=BLOCKING)
    result = run(pytester, "--loopwatch-strict", "--loopwatch-json=out.json", "-rf")
    source = (pytester.path / "test_blocking.py").read_text()
    expected = expected_findings(source)
    tests = [line for line in source.splitlines() if line.startswith("async def test_")]
    result.assert_outcomes(failed=len(tests))
    report = schemas.read(pytester.path / "out.json", "pytest-report")
    seen = {
        (call["site"].rsplit(":", 1)[1], call["call"])
        for calls in calls_in(report).values()
        for call in calls
        if call["site"] and call["excuse"] is None
    }
    for line, call in expected.items():
        assert (str(line), call) in seen, (line, call, sorted(seen))
        # the failure names the call, its line and function, with the stack under it
        result.stdout.fnmatch_lines([f"{call}* test_blocking.py:{line} in *"])
    result.stdout.fnmatch_lines(["*- mark the test @pytest.mark.loopwatch(allow=True)*"])
    result.stdout.fnmatch_lines([
        f"loopwatch: strict mode: * blocking call(s) in {len(tests)} of {len(tests)} test(s), *",
    ])
    assert "Timeout" not in result.stdout.str()


def test_what_does_not_block_is_not_a_finding(pytester: pytest.Pytester) -> None:
    """asyncio's own I/O, threads, executors, sync tests, logging and imports: nothing found."""
    suite(pytester, conftest=SERVERS + IMPORTED, test_quiet=NOT_BLOCKING)
    result = run(pytester, "--loopwatch-strict", "--loopwatch-json=out.json")
    tests = NOT_BLOCKING.count("\ndef test_") + NOT_BLOCKING.count("\nasync def test_")
    result.assert_outcomes(passed=tests)
    report = schemas.read(pytester.path / "out.json", "pytest-report")
    assert calls_in(report) == {}, calls_in(report)
    assert report["outside_tests_calls"] == []
    result.stdout.fnmatch_lines([f"*strict mode: 0 blocking call(s) in 0 of {tests} test(s)*"])


MODES = '''
import time

import pytest


@pytest.mark.asyncio
async def test_sleeps():
    time.sleep(0.001)  # finding: time.sleep
'''


def test_warn_and_report_modes(pytester: pytest.Pytester) -> None:
    """warn: a LoopwatchWarning at the line, the test passes; report: only the summary."""
    suite(pytester, test_modes=MODES)
    warned = run(pytester, "--loopwatch-strict", "--loopwatch-mode=warn")
    warned.assert_outcomes(passed=1, warnings=1)
    warned.stdout.fnmatch_lines([
        "*test_modes.py:8: LoopwatchWarning: loopwatch: test_modes.py::test_sleeps made a "
        "blocking call on the event loop's thread (strict mode): time.sleep in the test "
        "at test_modes.py:8 in test_sleeps*",
    ])
    reported = run(pytester, "--loopwatch-strict", "--loopwatch-mode=report")
    reported.assert_outcomes(passed=1)
    reported.stdout.fnmatch_lines(["*1        1  time.sleep  test_modes.py:8 in test_sleeps*"])


STRICTNESS = '''
import time

import pytest


@pytest.mark.asyncio
async def test_plain():
    time.sleep(0.001)


@pytest.mark.asyncio
@pytest.mark.loopwatch(strict=True)
async def test_marked_strict():
    time.sleep(0.001)


@pytest.mark.asyncio
@pytest.mark.loopwatch(strict=False)
async def test_marked_not_strict():
    time.sleep(0.001)


@pytest.mark.asyncio
@pytest.mark.loopwatch(allow=True)
async def test_allowed():
    time.sleep(0.001)
'''


@pytest.mark.parametrize("how", ["none", "option", "ini", "env"])
def test_where_strict_mode_comes_from(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Command line, ini or environment switch it on; the marker decides per test."""
    suite(pytester, ini="loopwatch_strict = true\n" if how == "ini" else "",
          test_strictness=STRICTNESS)
    args = ["--loopwatch"]
    if how == "option":
        args = ["--loopwatch-strict"]  # on its own: it switches the plugin on
    if how == "env":
        monkeypatch.setenv("LOOPWATCH_PYTEST_STRICT", "1")
    result = run(pytester, *args, "-rf")
    failed = {"test_marked_strict"} | ({"test_plain"} if how != "none" else set())
    result.assert_outcomes(failed=len(failed), passed=4 - len(failed))
    for name in failed:
        result.stdout.fnmatch_lines([f"FAILED test_strictness.py::{name} - *time.sleep at*"])
    if how != "none":
        result.stdout.fnmatch_lines(["loopwatch: threshold=100 ms *, strict (*)*"])


ALLOWED = '''
import os

import pytest

import helpers

pytestmark = pytest.mark.asyncio


async def test_helper_module(tmp_path):
    helpers.make_file(tmp_path)


async def test_by_path_pattern(tmp_path):
    os.listdir(tmp_path)


async def test_not_allowed(tmp_path):
    os.listdir(tmp_path)  # finding: os.listdir
'''

HELPERS = '''
def make_file(folder):
    (folder / "made").write_text("x")
'''


def test_allow_list(pytester: pytest.Pytester) -> None:
    """ini loopwatch_allow: module.function and path:function patterns accept findings."""
    suite(pytester, ini="""
        loopwatch_allow =
            helpers.make_*
            test_allowed.py:test_by_*
    """, test_allowed=ALLOWED, helpers=HELPERS)
    result = run(pytester, "--loopwatch-strict", "--loopwatch-json=out.json", "-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*allow=2 pattern(s)*",
        "FAILED test_allowed.py::test_not_allowed - *os.listdir at test_allowed.py:19*",
    ])
    report = schemas.read(pytester.path / "out.json", "pytest-report")
    excuses = {node.split("::")[1]: calls[0]["excuse"] for node, calls in calls_in(report).items()}
    assert excuses == {
        "test_helper_module": "allowed by loopwatch_allow 'helpers.make_*'",
        "test_by_path_pattern": "allowed by loopwatch_allow 'test_allowed.py:test_by_*'",
        "test_not_allowed": None,
    }


def test_a_bad_allow_pattern_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    suite(pytester, ini="loopwatch_allow = not a pattern\n", test_modes=MODES)
    result = run(pytester, "--loopwatch-strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: invalid loopwatch allow 'not a pattern' from ini option loopwatch_allow: "
        "expected module.function or path/glob.py:function, one per line",
    ])
    assert "Traceback" not in result.stderr.str()


BASELINED = '''
import os
import time

import pytest

pytestmark = pytest.mark.asyncio


async def test_sleeps():
    time.sleep(0.001)


async def test_lists(tmp_path):
    os.listdir(tmp_path)


async def test_stats(tmp_path):
    os.stat(tmp_path)
'''


def test_baseline_round_trip(pytester: pytest.Pytester) -> None:
    """Record; known findings pass after lines move; a new one fails; a fixed one is stale."""
    suite(pytester, test_baselined=BASELINED)
    recorded = run(pytester, "--loopwatch-strict", "--loopwatch-baseline=known.json",
                   "--loopwatch-update-baseline")
    recorded.assert_outcomes(passed=3)
    recorded.stdout.fnmatch_lines(["loopwatch: baseline written to known.json: 3 finding(s)"])
    written = (pytester.path / "known.json").read_text()
    assert written.splitlines()[3:6] == [
        '    {"call": "os.listdir", "file": "test_baselined.py", "function": "test_lists", '
        '"kind": "call"},',
        '    {"call": "time.sleep", "file": "test_baselined.py", "function": "test_sleeps", '
        '"kind": "call"},',
        '    {"call": "os.stat", "file": "test_baselined.py", "function": "test_stats", '
        '"kind": "call"}',
    ], written  # sorted by file, then function

    # lines move (a new import and comment on top), test_stats is fixed, a new finding comes
    edited = BASELINED.replace("import os\n", "import os\nimport sys  # moved\n\n# lines move\n")
    edited = edited.replace("    os.stat(tmp_path)\n", "    await asyncio.sleep(0)\n")
    edited = "import asyncio\n" + edited + textwrap.dedent('''

        async def test_new(tmp_path):
            (tmp_path / "new").write_text("x")  # finding: open
    ''')
    pytester.makepyfile(test_baselined=edited)
    judged = run(pytester, "--loopwatch-strict", "--loopwatch-baseline=known.json", "-rf")
    judged.assert_outcomes(passed=3, failed=1)
    line = next(n for n, _ in expected_findings(
        (pytester.path / "test_baselined.py").read_text()).items())
    judged.stdout.fnmatch_lines([
        f"FAILED test_baselined.py::test_new - *open at test_baselined.py:{line}*",
    ])
    judged.stdout.fnmatch_lines([
        "loopwatch: 1 baseline entry not seen in this run (stale: *",
        "  os.stat in test_stats (test_baselined.py)",
    ])


def test_baseline_also_holds_blocks(pytester: pytest.Pytester) -> None:
    """Blocks over the threshold go to the baseline too (kind "block"), without strict mode."""
    suite(pytester, test_slow="""
        import time

        import pytest


        @pytest.mark.asyncio
        async def test_slow():
            time.sleep(0.15)
    """)
    args = ("--loopwatch", "--loopwatch-threshold=0.05", "--loopwatch-baseline=known.json")
    run(pytester, *args, "--loopwatch-update-baseline").assert_outcomes(passed=1)
    data = schemas.read(pytester.path / "known.json", "baseline")
    assert data["findings"] == [{"file": "test_slow.py", "function": "test_slow", "kind": "block"}]
    run(pytester, *args).assert_outcomes(passed=1)
    (pytester.path / "known.json").write_text(
        json.dumps({"loopwatch_baseline": 1, "findings": []})
    )
    run(pytester, *args).assert_outcomes(failed=1)


def test_baseline_with_xdist(pytester: pytest.Pytester) -> None:
    """-n 2: one baseline file from every worker's findings; then every known one passes."""
    pytest.importorskip("xdist")
    suite(pytester, test_baselined=BASELINED, test_modes=MODES)
    args = ("--loopwatch-strict", "--loopwatch-baseline=known.json", "-n", "2")
    run(pytester, *args, "--loopwatch-update-baseline").assert_outcomes(passed=4)
    data = schemas.read(pytester.path / "known.json", "baseline")
    assert sorted(f["function"] for f in data["findings"]) == [
        "test_lists", "test_sleeps", "test_sleeps", "test_stats",
    ]
    judged = run(pytester, *args)
    judged.assert_outcomes(passed=4)
    assert "stale" not in judged.stdout.str()


@pytest.mark.parametrize("problem", ["missing", "not json", "not a baseline", "no path"])
def test_baseline_problems_are_one_line_usage_errors(
    pytester: pytest.Pytester, problem: str
) -> None:
    suite(pytester, test_modes=MODES)
    path = pytester.path / "known.json"
    args = ["--loopwatch-strict", "--loopwatch-baseline=known.json"]
    if problem == "not json":
        path.write_text("{")
    elif problem == "not a baseline":
        path.write_text("[]")
    elif problem == "no path":
        args = ["--loopwatch-strict", "--loopwatch-update-baseline"]
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = {
        "missing": "no such file; write one with --loopwatch-update-baseline",
        "not json": "not readable as JSON: *",
        "not a baseline": 'not a loopwatch baseline (expected "loopwatch_baseline": 1)',
        "no path": "it needs a file to write: --loopwatch-baseline PATH or ini loopwatch_baseline",
    }[problem]
    result.stderr.fnmatch_lines([f"ERROR: invalid loopwatch baseline *: {message}"])
    assert "Traceback" not in result.stderr.str()


LOOPS = '''
import asyncio
import time
import unittest

import pytest


@pytest.mark.asyncio(loop_scope="module")
async def test_module_scoped_loop():
    time.sleep(0.001)  # finding: time.sleep


@pytest.mark.anyio
async def test_anyio():
    time.sleep(0.001)  # finding: time.sleep


def test_asyncio_run_in_a_sync_test():
    async def main():
        time.sleep(0.001)  # finding: time.sleep

    asyncio.run(main())


def test_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        time.sleep(0.001)  # finding: time.sleep

    uvloop.run(main())


class TestCase(unittest.IsolatedAsyncioTestCase):
    async def test_isolated(self):
        time.sleep(0.001)  # finding: time.sleep
'''


def test_every_kind_of_loop(pytester: pytest.Pytester) -> None:
    """pytest-asyncio (module loop), anyio, asyncio.run, uvloop, IsolatedAsyncioTestCase."""
    suite(pytester, conftest='''
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"
    ''', test_loops=LOOPS)
    result = run(pytester, "--loopwatch-strict", "--loopwatch-json=out.json")
    uvloop = importlib.util.find_spec("uvloop") is not None
    result.assert_outcomes(failed=4 + uvloop, skipped=1 - uvloop)
    source = (pytester.path / "test_loops.py").read_text()
    report = schemas.read(pytester.path / "out.json", "pytest-report")
    lines = {call["site"].rsplit(":", 1)[1]
             for calls in calls_in(report).values() for call in calls}
    expected = {str(n) for n, _ in expected_findings(source).items()}
    if not uvloop:
        expected.discard(str(source.splitlines().index("    uvloop.run(main())") - 1))
    assert lines == expected


def test_suite_passes_without_strict(pytester: pytest.Pytester) -> None:
    """The same blocking suite under plain --loopwatch: short calls are no blocks."""
    suite(pytester, test_blocking=BLOCKING)
    # Short, not instant: on a busy machine starting a Python subprocess can take
    # longer than the default 100 ms; a threshold far above any of these calls
    # keeps this about strict mode being off.
    result = run(pytester, "--loopwatch", "--loopwatch-threshold=2", "-p", "no:randomly")
    tests = BLOCKING.count("\nasync def test_")
    result.assert_outcomes(passed=tests)
    assert "strict mode" not in result.stdout.str()



FIXTURE = '''
import os

import pytest


@pytest.mark.asyncio
@pytest.mark.loopwatch(allow=True, strict=True)
async def test_asserts_on_its_calls(loopwatch, tmp_path):
    os.listdir(tmp_path)
    assert [call.call for call in loopwatch.calls] == ["os.listdir"]
    assert loopwatch.calls[0].site.endswith("test_fixture.py:9")
'''


@pytest.mark.parametrize("watch", [True, False])
def test_the_fixture_gives_a_test_its_calls(pytester: pytest.Pytester, watch: bool) -> None:
    """``loopwatch.calls``: with the plugin on, and with the fixture's own session."""
    suite(pytester, test_fixture=FIXTURE)
    run(pytester, *(["--loopwatch"] if watch else [])).assert_outcomes(passed=1)


def test_a_path_option_given_apart_from_its_value_is_warned_about(
    pytester: pytest.Pytester,
) -> None:
    """pytest reads `--loopwatch-json out.json` (out.json existing) as a test path too."""
    suite(pytester, test_modes=MODES)
    (pytester.path / "out.json").write_text("{}")
    result = run(pytester, "--loopwatch", "--loopwatch-json", "out.json")
    result.stdout.fnmatch_lines([
        "*PytestConfigWarning: loopwatch: write --loopwatch-json=out.json (with '='): *",
    ])
    quiet = run(pytester, "--loopwatch", "--loopwatch-json=out.json")
    assert "PytestConfigWarning" not in quiet.stdout.str()
