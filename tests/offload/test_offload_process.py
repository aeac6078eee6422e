"""offload("process"): worker processes with their own event loops, errors, crashes, shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import traceback
import types
import warnings
from pathlib import Path

import offload_workload as w
import pytest

from loopwatch.offload import (
    OffloadError,
    RemoteError,
    RemoteTraceback,
    UnpicklableError,
    WorkerCrashedError,
    _pools,
    offload,
    shutdown,
)

WAIT = 30.0  # seconds; generous: only reached when something is broken


async def appears(path: Path, timeout: float = WAIT) -> bool:
    """Wait (without blocking the loop) until a file exists."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@pytest.mark.asyncio
async def test_sync_and_async_functions_run_in_a_worker() -> None:
    """Plain functions run in a worker's main thread, async ones on its event loop."""
    assert await w.square(7) == 49
    pid, thread = await w.process_where()
    assert pid != os.getpid() and thread == "MainThread"
    pid, thread = await w.async_where()
    assert pid != os.getpid() and thread == "loopwatch-worker-loop"


@pytest.mark.asyncio
async def test_plain_function_and_kwargs_without_a_decorator() -> None:
    """offload("process")(f) works on an undecorated module-level function, kwargs included."""
    add = offload("process")(w.add)
    assert await add(2, b=5) == 7
    async_add = offload("process")(w.async_add)
    assert await async_add(a=1, b=2) == 3


@pytest.mark.asyncio
async def test_methods_classmethods_and_staticmethods() -> None:
    """self/cls travel as arguments; every decorator order works."""
    counter = w.Counter(10)
    assert await counter.plus(5) == 15
    assert await w.Counter.plus(counter, 6) == 16
    assert await w.Counter.make(3) == ("Counter", 3)
    assert await counter.make(4) == ("Counter", 4)
    assert await w.Counter.make2(5) == ("Counter", 5)
    assert await w.Counter.twice(4) == 8
    assert await counter.twice(5) == 10


@pytest.mark.asyncio
async def test_one_worker_serves_many_concurrent_async_calls() -> None:
    """Twenty calls wait for each other inside a single worker: they ran there at once."""
    results = await asyncio.wait_for(
        asyncio.gather(*(w.rendezvous(20) for _ in range(20))), WAIT
    )
    pids = {pid for pid, _ in results}
    assert len(pids) == 1 and os.getpid() not in pids
    assert all(count >= 20 for _, count in results)


@pytest.mark.asyncio
async def test_large_arguments_and_results_both_ways() -> None:
    """Payloads far larger than a socket buffer arrive whole, also many at once."""
    data = bytes(range(256)) * 32_000  # 8 MB
    size, back = await w.echo_size(data)
    assert size == len(data) and back == data[::-1]
    chunk = data[:1_000_000]
    results = await asyncio.gather(*(w.echo_size(chunk) for _ in range(12)))
    assert all(result == (len(chunk), chunk[::-1]) for result in results)


@pytest.mark.asyncio
async def test_remote_exception_keeps_type_message_and_traceback() -> None:
    """The function's exception comes back as itself, with the worker's traceback as cause."""
    with pytest.raises(w.ParseError, match=r"^bad header$") as info:
        await w.fail("bad header")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise ParseError(message)" in cause.tb
    assert "offload_workload.py" in cause.tb
    shown = "".join(traceback.format_exception(info.value))
    assert "raise ParseError(message)" in shown
    with pytest.raises(w.ParseError, match=r"^from a coroutine$") as info:
        await w.async_fail("from a coroutine")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in async_fail" in info.value.__cause__.tb


@pytest.mark.asyncio
async def test_exception_that_cannot_be_rebuilt_becomes_remote_error() -> None:
    """An exception that does not survive pickling still says what it was."""
    with pytest.raises(RemoteError) as info:
        await w.fail_oddly()
    assert info.value.type_name == "offload_workload.NeedsTwoArgs"
    assert str(info.value) == "offload_workload.NeedsTwoArgs: x/y"
    assert isinstance(info.value.__cause__, RemoteTraceback)


@pytest.mark.asyncio
async def test_unpicklable_argument_fails_fast_naming_it() -> None:
    """A lambda argument is refused before anything is sent, naming the parameter."""
    with pytest.raises(UnpicklableError) as info:
        await w.parse(b"data", cb=lambda: None)
    assert str(info.value) == (
        "argument 'cb' of parse() cannot be sent to a worker process: "
        "cannot pickle 'function' object (a lambda?)"
    )
    assert info.value.what == "argument 'cb'"
    with pytest.raises(UnpicklableError, match=r"argument 'data' of parse\(\).*_thread.lock"):
        await w.parse(threading.Lock())  # type: ignore[arg-type]
    assert await w.parse(b"data") == 4


@pytest.mark.asyncio
async def test_unpicklable_result_names_the_result() -> None:
    """A result that cannot be pickled fails with a message saying so."""
    with pytest.raises(UnpicklableError) as info:
        await w.make_generator(3)
    assert str(info.value) == (
        "the result of make_generator() cannot be sent back from the worker process: "
        "cannot pickle 'generator' object"
    )
    assert info.value.what == "result"


@pytest.mark.asyncio
async def test_function_that_cannot_be_imported_by_a_worker() -> None:
    """A nested function cannot be found by a worker process: the message says why."""

    def local(x: int) -> int:
        return x

    with pytest.raises(UnpicklableError, match=r"local\(\) cannot run in a worker process: "
                       r"it is defined inside another function"):
        await offload("process")(local)(1)


@pytest.mark.asyncio
async def test_function_missing_in_the_worker_is_reported_by_name() -> None:
    """A function whose module exists only in this process fails clearly, naming it."""
    ghost = types.ModuleType("ghost_module_only_here")
    exec("def vanish(x):\n    return x\n", ghost.__dict__)
    sys.modules[ghost.__name__] = ghost
    try:
        with pytest.raises(OffloadError) as info:
            await offload("process")(ghost.vanish)(1)
    finally:
        del sys.modules[ghost.__name__]
    assert type(info.value) is OffloadError
    assert str(info.value).startswith("vanish(): the worker process could not load the function")
    assert "ModuleNotFoundError" in str(info.value)
    assert await w.square(3) == 9


@pytest.mark.asyncio
async def test_worker_crash_fails_only_its_calls_and_the_pool_recovers(tmp_path: Path) -> None:
    """os._exit in one worker fails the call in it; the call in the other worker completes."""
    gate = tmp_path / "gate"
    holding = asyncio.ensure_future(w.hold(str(gate)))
    await asyncio.sleep(0)
    with pytest.raises(WorkerCrashedError) as info:
        await w.crash_beside(3)
    assert info.value.exitcode == 3
    assert "running crash_beside() exited with code 3" in str(info.value)
    gate.touch()
    survivor = await asyncio.wait_for(holding, WAIT)
    assert survivor != os.getpid()
    assert await asyncio.wait_for(w.hold(str(gate)), WAIT) > 0


@pytest.mark.asyncio
async def test_crash_fails_every_call_in_flight_in_that_worker(tmp_path: Path) -> None:
    """An async call waiting in the worker fails too when a sync call kills it; then recovery."""
    marker = tmp_path / "waiting"
    waiting = asyncio.ensure_future(w.wait_forever(str(marker)))
    assert await appears(Path(str(marker) + ".started"))
    before = await w.pid_alone()
    with pytest.raises(WorkerCrashedError, match="exited with code 7"):
        await w.crash_alone(7)
    with pytest.raises(WorkerCrashedError, match=r"running wait_forever\(\)"):
        await asyncio.wait_for(waiting, WAIT)
    after = await w.pid_alone()
    assert after != before


@pytest.mark.asyncio
async def test_cancelling_reaches_the_async_function_in_the_worker(tmp_path: Path) -> None:
    """Cancelling the awaiting task cancels the task running the call in the worker."""
    marker = tmp_path / "cancel"
    task = asyncio.ensure_future(w.wait_forever(str(marker)))
    assert await appears(Path(str(marker) + ".started"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await appears(marker)
    assert marker.read_text() == "cancelled"


@pytest.mark.asyncio
async def test_cancelling_a_queued_sync_call_means_it_never_runs(tmp_path: Path) -> None:
    """A plain call waiting for a free worker is dropped when its caller gives up."""
    gate = tmp_path / "gate"
    first = asyncio.ensure_future(w.gated(str(gate), str(tmp_path / "first")))
    second = asyncio.ensure_future(w.gated(str(gate), str(tmp_path / "second")))
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.touch()
    assert await asyncio.wait_for(first, WAIT) == "finished"
    assert await w.gated(str(gate), str(tmp_path / "third")) == "finished"
    assert not (tmp_path / "second.started").exists()


@pytest.mark.asyncio
async def test_cancelling_a_running_sync_call_drops_its_result(tmp_path: Path) -> None:
    """A running plain function cannot be interrupted: the caller is released at once, the
    function runs to its end in the worker, and the worker then serves the next call."""
    gate = tmp_path / "gate"
    marker = tmp_path / "running"
    task = asyncio.ensure_future(w.gated(str(gate), str(marker)))
    assert await appears(Path(str(marker) + ".started"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.touch()
    assert await appears(marker)
    assert await asyncio.wait_for(w.gated(str(gate), str(tmp_path / "next")), WAIT) == "finished"


def _offload_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("loopwatch-offload")]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_shutdown_leaves_no_processes_threads_or_fds() -> None:
    """After shutdown() no worker process, pool thread or file descriptor is left."""
    shutdown()
    fds = _open_fds()

    async def main() -> list[int]:
        await asyncio.gather(w.square(2), w.async_where(), w.process_where(), w.add_in_thread())
        return _pools.process_pool(None, None).worker_pids()

    pids = asyncio.run(main())
    assert pids
    shutdown()
    children = [p for p in multiprocessing.active_children() if p.name.startswith("loopwatch")]
    assert children == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _offload_threads() == []
    assert _open_fds() == fds


def test_exit_shuts_workers_down_without_help(tmp_path: Path) -> None:
    """A program that never calls shutdown() still exits cleanly, leaving no worker behind."""
    script = tmp_path / "uses_offload.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import offload_workload as w
        from loopwatch.offload import _pools

        async def main():
            await asyncio.gather(w.square(3), w.async_where(), w.rendezvous(1))
            pids = []
            for pool in list(_pools._processes.values()):
                pids += pool.worker_pids()
            print(" ".join(map(str, pids)))

        if __name__ == "__main__":
            asyncio.run(main())
    """))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) >= 2, done.stdout
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
            print(pid, Path(f"/proc/{pid}/status").read_text()[:300])


def _in_forked_child(conn: multiprocessing.connection.Connection) -> None:
    async def main() -> tuple[int, int, str, int]:
        return (
            await w.square(6),
            (await w.process_where())[0],
            (await w.add_in_thread())[1],
            os.getpid(),
        )

    try:
        conn.send(asyncio.run(main()))
    except BaseException as exc:
        conn.send(repr(exc))
    finally:
        shutdown()


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX-only")
def test_use_after_fork() -> None:
    """A forked child gets fresh pools of its own; the parent's keep working."""

    async def parent_calls() -> int:
        await w.add_in_thread()
        return (await w.process_where())[0]

    parent_worker = asyncio.run(parent_calls())
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    with warnings.catch_warnings():
        # 3.12+ warns about fork() in a process with threads: that is what this tests
        warnings.simplefilter("ignore", DeprecationWarning)
        child = context.Process(target=_in_forked_child, args=(send,))
        child.start()
    send.close()
    assert receive.poll(WAIT), "the forked child did not answer"
    result = receive.recv()
    child.join(WAIT)
    assert child.exitcode == 0
    assert isinstance(result, tuple), result
    squared, child_worker, thread, child_pid = result
    assert squared == 36
    assert child_worker not in (parent_worker, child_pid, os.getpid())
    assert thread.startswith("loopwatch-offload")
    assert asyncio.run(parent_calls()) == parent_worker


@pytest.mark.asyncio
async def test_mp_context_and_max_workers_options() -> None:
    """The start method and pool size can be chosen; such pools are separate and shared."""
    where = offload("process", max_workers=1, mp_context="spawn")(w.where)
    same = offload("process", max_workers=1, mp_context="spawn")(w.add)
    first, _ = await where()
    assert await same(1, 1) == 2
    assert (await where())[0] == first
