"""``loopwatch attach PID``: real processes, watched through ``sys.remote_exec`` (3.14+).

The target is a small asyncio program that never imports loopwatch: every
0.5 s its loop blocks in ``time.sleep(0.15)`` at a known line, and on ``state``
(stdin) it prints what it has: its threads, its patches, hooks and handlers.
Waits are for conditions (a line printed, a thread gone), with generous
timeouts, never for a fixed time.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import schemas

from loopwatch.attach import AttachError, _explain, attach
from loopwatch.model import Report

needs_remote_exec = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="sys.remote_exec is new in Python 3.14"
)
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TARGET = """\
import asyncio, atexit, gc, json, os, sys, threading, time


async def beat():
    while True:
        await asyncio.sleep(0.35)
        time.sleep(0.15)  # the blocking line
        print("beat", file=sys.stderr, flush=True)


def state():
    loop = asyncio.get_running_loop()
    base = asyncio.base_events.BaseEventLoop
    return {
        "tasks": len(os.listdir("/proc/self/task")),
        "threads": sorted(t.name for t in threading.enumerate()),
        "meta_path": [type(f).__qualname__ for f in sys.meta_path],
        "gc_callbacks": len(gc.callbacks),
        "atexit": atexit._ncallbacks(),
        "select_patched": "select" in vars(loop._selector),
        "run_forever": base.run_forever.__module__ + "." + base.run_forever.__qualname__,
        "run_once": base._run_once.__module__ + "." + base._run_once.__qualname__,
        "profile": repr(sys.getprofile()),
        "trace": repr(sys.gettrace()),
        "loopwatch": "loopwatch" in sys.modules,
    }


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    task = asyncio.create_task(beat())
    print("ready", flush=True)
    while line := (await reader.readline()).strip():
        if line == b"state":
            print(json.dumps(state()), flush=True)
        elif line == b"exit":
            break
    task.cancel()


if sys.argv[1:] == ["--wait-first"]:
    print("waiting", flush=True)
    sys.stdin.readline()  # the main thread held in a C call until told
asyncio.run(main())
"""
BLOCK_LINE = TARGET.splitlines().index("        time.sleep(0.15)  # the blocking line") + 1
TIMEOUT = 60.0


class Lines:
    """The lines a pipe gives, gathered by a thread; wait for one that matches."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait(self, match: Callable[[str], bool], start: int = 0, count: int = 1) -> str:
        """The ``count``-th line from ``start`` on that matches."""
        def found() -> list[str]:
            return [line for line in self.lines[start:] if match(line)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(found()) >= count, TIMEOUT):
                raise AssertionError(f"no line matched in {TIMEOUT} s; got {self.lines}")
            return found()[count - 1]

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def join(self) -> None:
        self._thread.join(TIMEOUT)


class Process:
    """A subprocess whose stdout and stderr lines are gathered as they come."""

    def __init__(self, args: list[str], **options: Any) -> None:
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, **options)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        status = self.proc.wait(TIMEOUT)
        self.out.join()
        self.err.join()
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.out.join()
        self.err.join()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


class Target(Process):
    def __init__(self, args: list[str], **options: Any) -> None:
        super().__init__(args, **options)
        self.out.wait(lambda line: line in ("ready", "waiting"))

    def state(self) -> dict[str, Any]:
        start = len(self.out.lines)
        self.send("state")
        return json.loads(self.out.wait(lambda line: line.startswith("{"), start))  # type: ignore[no-any-return]

    def tasks(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def beats(self) -> int:
        return sum(line == "beat" for line in self.err.lines)

    def folders(self) -> list[str]:
        return glob.glob(f"/tmp/loopwatch-attach-{self.pid}-*")


def eventually(condition: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(int(TIMEOUT / 0.05)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError(f"not within {TIMEOUT} s: {what}")


def without_loopwatch(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "loopwatch"}


@pytest.fixture
def target_script(tmp_path: Path) -> Path:
    path = tmp_path / "target.py"
    path.write_text(TARGET)
    return path


@pytest.fixture
def start_target(target_script: Path) -> Iterator[Callable[..., Target]]:
    started: list[Target] = []

    def start(*python_args: str, python: str = sys.executable, **options: Any) -> Target:
        args = [python, *python_args, str(target_script)]
        if options.pop("wait_first", False):
            args.append("--wait-first")
        target = Target(args, cwd=target_script.parent, **options)
        started.append(target)
        return target

    yield start
    for target in started:
        target.close()


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(args: list[str], **options: Any) -> Process:
        process = Process(args, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def loopwatch(*args: str, cwd: Path, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loopwatch", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, **options)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m loopwatch: error: "), result.stderr
    return lines[0].removeprefix("python -m loopwatch: error: ")


# -- the watch ---------------------------------------------------------------------------


@needs_remote_exec
@linux
def test_attach_reports_the_blocks_and_leaves_nothing(
    start_target: Callable[..., Target], tmp_path: Path
) -> None:
    target = start_target()
    before, tasks = target.state(), target.tasks()
    assert not before["loopwatch"]

    result = loopwatch("attach", str(target.pid), "--duration", "4", "--json", "out.json",
                       cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"loopwatch: attached to process {target.pid} (Python 3.")
    assert "1 event loop: _UnixSelectorEventLoop#1 (MainThread); watching for 4 s" in lines[0]
    assert lines[1] == (f"loopwatch: detached from process {target.pid}: "
                        "nothing of loopwatch's runs in it")
    assert f"target.py:{BLOCK_LINE} in beat" in result.stderr
    report = schemas.read(tmp_path / "out.json")
    sites = [block["site"] for block in report["blocks"]]
    assert len(sites) >= 4, sites
    assert all(site.endswith(f"target.py:{BLOCK_LINE}") for site in sites), sites
    assert all(block["duration"] >= 0.1 for block in report["blocks"])

    assert target.proc.poll() is None, "the target stopped"
    eventually(lambda: target.tasks() == tasks, f"the target back to {tasks} threads")
    after = target.state()
    assert after["loopwatch"]  # imported: Python cannot unload modules
    assert without_loopwatch(after) == without_loopwatch(before)
    assert not target.folders()


@needs_remote_exec
@linux
def test_the_python_api_stops_when_told(start_target: Callable[..., Target]) -> None:
    target = start_target()
    tasks = target.tasks()
    news: list[str] = []
    attached = threading.Event()
    stop = threading.Event()

    def say(line: str) -> None:
        news.append(line)
        attached.set()

    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(attach(target.pid, threshold=0.05, stop=stop, say=say))
    )
    thread.start()
    try:
        assert attached.wait(TIMEOUT), "not attached"
        # Two blocks that began after the watch did.
        target.err.wait(lambda line: line == "beat", start=len(target.err.lines), count=3)
    finally:
        stop.set()
        thread.join(TIMEOUT)
    (report,) = result
    assert report.threshold == 0.05
    assert len(report.blocks) >= 2
    assert news[-1].startswith(f"detached from process {target.pid}")
    eventually(lambda: target.tasks() == tasks, f"the target back to {tasks} threads")


@needs_remote_exec
@linux
def test_live_gives_the_report_so_far_while_watching(
    start_target: Callable[..., Target],
) -> None:
    """With a view (--live), the process writes its report every half second: the view's
    source returns None at first, then reports whose blocks grow; nothing is left after."""
    target = start_target()
    tasks = target.tasks()
    seen: list[int | None] = []
    stop = threading.Event()

    @contextlib.contextmanager
    def view(source: Callable[[], Report | None]) -> Iterator[None]:
        def poll() -> None:
            while not stop.is_set():
                report = source()
                seen.append(None if report is None else len(report.blocks))
                counts = [n for n in seen if n]
                if len(counts) >= 3 and counts[-1] > counts[0]:
                    stop.set()  # it grew while we watched: enough
                stop.wait(0.1)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            yield
        finally:
            stop.set()
            poller.join(TIMEOUT)

    report = attach(target.pid, threshold=0.05, stop=stop, view=view, duration=TIMEOUT)
    counts = [n for n in seen if n is not None]
    assert counts and counts == sorted(counts) and counts[-1] > counts[0], seen
    assert len(report.blocks) >= counts[-1]
    eventually(lambda: target.tasks() == tasks, f"the target back to {tasks} threads")


@needs_remote_exec
@linux
def test_ctrl_c_ends_the_watch_with_the_report(
    start_target: Callable[..., Target], processes: Callable[..., Process], tmp_path: Path
) -> None:
    target = start_target()
    tasks = target.tasks()
    attacher = processes([sys.executable, "-m", "loopwatch", "attach", str(target.pid),
                          "--json", "out.json"], cwd=tmp_path)
    line = attacher.err.wait(lambda line: "attached to process" in line)
    assert line.endswith("watching until Ctrl-C")
    target.err.wait(lambda line: line == "beat", start=len(target.err.lines), count=3)
    attacher.proc.send_signal(signal.SIGINT)

    assert attacher.wait() == 0, attacher.err.text()
    assert f"target.py:{BLOCK_LINE} in beat" in attacher.err.text()
    assert "Traceback" not in attacher.err.text()
    assert len(schemas.read(tmp_path / "out.json")["blocks"]) >= 2
    eventually(lambda: target.tasks() == tasks, f"the target back to {tasks} threads")
    assert not target.folders()


@needs_remote_exec
@linux
def test_a_killed_attacher_leaves_nothing_behind(
    start_target: Callable[..., Target], processes: Callable[..., Process], tmp_path: Path
) -> None:
    """The FIFO's end of file tells the target: it stops the watch and removes the folder."""
    target = start_target()
    before, tasks = target.state(), target.tasks()
    attacher = processes([sys.executable, "-m", "loopwatch", "attach", str(target.pid)],
                         cwd=tmp_path)
    attacher.err.wait(lambda line: "attached to process" in line)
    assert target.folders()
    attacher.proc.kill()
    attacher.wait()

    eventually(lambda: not target.folders(), "the folder removed by the target")
    eventually(lambda: target.tasks() == tasks, f"the target back to {tasks} threads")
    assert without_loopwatch(target.state()) == without_loopwatch(before)


@needs_remote_exec
@linux
def test_a_target_that_exits_while_watched_still_reports(
    start_target: Callable[..., Target], processes: Callable[..., Process], tmp_path: Path
) -> None:
    target = start_target()
    attacher = processes([sys.executable, "-m", "loopwatch", "attach", str(target.pid),
                          "--duration", "600", "--json", "out.json"], cwd=tmp_path)
    attacher.err.wait(lambda line: "attached to process" in line)
    target.err.wait(lambda line: line == "beat", start=len(target.err.lines), count=2)
    target.send("exit")
    assert target.wait() == 0, target.err.text()

    assert attacher.wait() == 0, attacher.err.text()
    assert f"loopwatch: process {target.pid} exited after" in attacher.err.text()
    assert len(schemas.read(tmp_path / "out.json")["blocks"]) >= 1


@needs_remote_exec
@linux
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_attaches_to_another_users_process(
    processes: Callable[..., Process], tmp_path: Path
) -> None:
    """The folder is given to the target's user, who must read the script and write there."""
    target = processes([sys.executable, "-c", TARGET], user=65534, group=65534, cwd=Path("/"))
    target.out.wait(lambda line: line == "ready")
    result = loopwatch("attach", str(target.pid), "--duration", "2", "--json", "out.json",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "detached from process" in result.stderr
    assert len(schemas.read(tmp_path / "out.json")["blocks"]) >= 1
    assert not glob.glob(f"/tmp/loopwatch-attach-{target.pid}-*")


@needs_remote_exec
@linux
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_not_permitted(start_target: Callable[..., Target]) -> None:
    target = start_target()
    result = loopwatch("attach", str(target.pid), cwd=Path("/"), user=65534, group=65534)
    assert one_line_error(result).startswith(
        f"not permitted to attach to process {target.pid} (user root): run loopwatch attach "
        "as root, or as the process's user"
    )


# -- what stops it -------------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="sys.remote_exec exists here")
def test_an_attacher_older_than_314_says_so(tmp_path: Path) -> None:
    result = loopwatch("attach", str(os.getpid()), cwd=tmp_path)
    major, minor = sys.version_info[:2]
    assert one_line_error(result) == (
        f"loopwatch attach needs Python 3.14 or newer (this is {major}.{minor})"
    )


def test_a_pid_must_be_a_number(tmp_path: Path) -> None:
    result = loopwatch("attach", "web-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "argument PID: invalid int value: 'web-1'" in result.stderr


@needs_remote_exec
@linux
def test_no_such_process(tmp_path: Path) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert one_line_error(loopwatch("attach", str(pid_max + 1), cwd=tmp_path)) == (
        f"no such process: {pid_max + 1}"
    )
    assert one_line_error(loopwatch("attach", "0", cwd=tmp_path)) == "not a process id: 0"


@needs_remote_exec
@linux
def test_not_a_python_process(processes: Callable[..., Process], tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    process = processes([sleep, "600"])
    message = one_line_error(loopwatch("attach", str(process.pid), cwd=tmp_path))
    assert message == (f"process {process.pid} ({os.path.realpath(sleep)}) is not a Python "
                       "process (no Python 3.14+ runtime found in it)")


@needs_remote_exec
@linux
@pytest.mark.parametrize(
    ("python_args", "env"),
    [(["-X", "disable-remote-debug"], {}), ([], {"PYTHON_DISABLE_REMOTE_DEBUG": "1"})],
    ids=["-X disable-remote-debug", "PYTHON_DISABLE_REMOTE_DEBUG"],
)
def test_remote_debugging_disabled(
    start_target: Callable[..., Target], tmp_path: Path,
    python_args: list[str], env: dict[str, str],
) -> None:
    target = start_target(*python_args, env={**os.environ, **env})
    assert one_line_error(loopwatch("attach", str(target.pid), cwd=tmp_path)) == (
        f"remote debugging is disabled in process {target.pid} (it was started with "
        "-X disable-remote-debug or PYTHON_DISABLE_REMOTE_DEBUG set)"
    )


def _other_pythons() -> list[str]:
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return [name for name in ("python3.13", "python3.15") if name != here and shutil.which(name)]


@needs_remote_exec
@linux
@pytest.mark.parametrize("python", _other_pythons() or [pytest.param("", marks=pytest.mark.skip(
    reason="no python3.13 or python3.15 here"))])
def test_another_python_version(
    processes: Callable[..., Process], tmp_path: Path, python: str
) -> None:
    process = processes([python, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"])
    process.out.wait(lambda line: line == "ready")
    theirs = python.removeprefix("python")
    message = one_line_error(loopwatch("attach", str(process.pid), cwd=tmp_path))
    if theirs < "3.14":
        assert message == (f"process {process.pid} runs Python {theirs}: loopwatch attach "
                           "needs Python 3.14 or newer there too")
    else:
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert message == (f"process {process.pid} runs Python {theirs} and this is {here}: "
                           f"attach with the same version ({python} -m loopwatch attach "
                           f"{process.pid})")


@needs_remote_exec
@linux
def test_loopwatch_not_importable_in_the_target(
    start_target: Callable[..., Target], tmp_path: Path
) -> None:
    no_site = [sys.executable, "-I", "-S", "-c", "import loopwatch"]
    if subprocess.run(no_site, capture_output=True, cwd="/").returncode == 0:
        pytest.skip("loopwatch is importable even without site-packages here")
    target = start_target("-I", "-S")
    before, tasks = target.state(), target.tasks()
    message = one_line_error(loopwatch("attach", str(target.pid), cwd=tmp_path))
    assert message.startswith(
        f"process {target.pid} cannot import loopwatch (No module named 'loopwatch'; Python 3."
    )
    assert message.endswith("): install loopwatch in its environment")
    eventually(lambda: target.tasks() == tasks, f"the target back to {tasks} threads")
    assert target.state() == before
    assert not target.folders()


@needs_remote_exec
@linux
def test_a_main_thread_held_in_a_c_call(
    start_target: Callable[..., Target], tmp_path: Path
) -> None:
    """The script waits for the main thread; once it runs, late, it does nothing."""
    target = start_target(wait_first=True)
    tasks = target.tasks()
    message = one_line_error(loopwatch("attach", str(target.pid), "--timeout", "1",
                                       cwd=tmp_path))
    assert message == (
        f"process {target.pid} did not run loopwatch's start script within 1 s: its main "
        "thread is held by a C call or a sleep, or an idle event loop waits for its next "
        "event (try --timeout); the script does nothing if it runs later"
    )
    assert target.folders()  # kept for the script
    start = len(target.out.lines)
    target.send("")  # the main thread goes on: it runs the script, then its loop
    target.out.wait(lambda line: line == "ready", start)
    eventually(lambda: not target.folders(), "the folder removed by the late script")
    state = target.state()
    assert not state["loopwatch"]
    assert state["tasks"] == tasks


@needs_remote_exec
@linux
def test_the_next_attach_removes_what_a_gone_process_never_ran(
    start_target: Callable[..., Target], processes: Callable[..., Process], tmp_path: Path
) -> None:
    target = start_target(wait_first=True)
    one_line_error(loopwatch("attach", str(target.pid), "--timeout", "1", cwd=tmp_path))
    left = target.folders()
    assert left
    target.close()  # killed before it ran the script
    sleep = processes(["sleep", "600"])
    one_line_error(loopwatch("attach", str(sleep.pid), cwd=tmp_path))
    assert not [folder for folder in left if os.path.exists(folder)]


# -- the messages, on any Python -----------------------------------------------------------


@linux
def test_remote_exec_errors_in_one_line(processes: Callable[..., Process]) -> None:
    python = processes([sys.executable, "-c", "import sys; sys.stdin.read()"])
    pid = python.pid
    newer = RuntimeError("Can't send commands from a Python 3.14 process to a Python 3.15 "
                         "process")
    assert str(_explain(pid, newer)).startswith(f"process {pid} runs Python 3.15 and this is ")
    older = RuntimeError("Can't send commands from a Python 3.14 process to a Python 3.13 "
                         "process")
    assert str(_explain(pid, older)) == (
        f"process {pid} runs Python 3.13: loopwatch attach needs Python 3.14 or newer there too"
    )
    assert str(_explain(pid, PermissionError(13, "Permission denied"))).startswith(
        f"not permitted to attach to process {pid}"
    )
    # No runtime found: the process's executable tells the version (3.11 and 3.12 have
    # no section loopwatch's Python could find).
    runtime = RuntimeError("PyRuntime address lookup failed during debug offsets "
                           "initialization")
    message = str(_explain(pid, runtime))
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info < (3, 14) and os.path.basename(os.path.realpath(sys.executable)) == (
        f"python{here}"
    ):
        assert message == (f"process {pid} ({os.path.realpath(sys.executable)}) runs Python "
                           f"{here}: loopwatch attach needs Python 3.14 or newer there too")
    assert isinstance(_explain(pid, runtime), AttachError)
