"""Worker processes: watch(subprocesses=True) and loopwatch run watch the processes a program
starts, through an environment variable and the startup hook the package installs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import loopwatch
from loopwatch._children import ENV

PROGRAM = """
import asyncio, multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor

import loopwatch


async def work(blocks):
    for _ in range(blocks):
        await asyncio.sleep(0.02)
        time.sleep(0.12)  # blocks in a worker


def worker(blocks):
    asyncio.run(work(blocks))


if __name__ == "__main__":
    how = sys.argv[1]
    with loopwatch.watch(threshold=0.05, subprocesses=True) as session:
        if how == "pool":
            with ProcessPoolExecutor(2) as pool:
                list(pool.map(worker, [2, 2]))
        else:
            context = multiprocessing.get_context(how)
            processes = [context.Process(target=worker, args=(2,)) for _ in range(2)]
            for process in processes:
                process.start()
            for process in processes:
                process.join()
    print(json.dumps(session.report().to_dict()))
"""


def _run(tmp_path: Path, how: str) -> dict[str, object]:
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent("import json\n" + PROGRAM))
    result = subprocess.run([sys.executable, str(path), how], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _blocking_line(tmp_path: Path) -> str:
    lines = (tmp_path / "prog.py").read_text().splitlines()
    return f"prog.py:{next(i for i, t in enumerate(lines, 1) if 'blocks in a worker' in t)}"


@pytest.mark.parametrize("how", ["spawn", "forkserver", "fork", "pool"])
def test_worker_processes_blocks_come_into_the_parents_report(tmp_path: Path, how: str) -> None:
    """Two workers each block twice: four blocks, at the line, with each worker's pid."""
    report = _run(tmp_path, how)
    blocks = report["blocks"]
    assert isinstance(blocks, list)
    assert len(blocks) == 4, [(b["site"], b["pid"]) for b in blocks]
    assert all(b["site"].endswith(_blocking_line(tmp_path)) for b in blocks)
    pids = {b["pid"] for b in blocks}
    assert len(pids) <= 2 and os.getpid() not in pids
    for pid in pids:
        assert sum(b["pid"] == pid for b in blocks) % 2 == 0  # each worker blocked twice
        assert all(f"[pid {pid}]" in b["loop"] for b in blocks if b["pid"] == pid)
    assert any(e.startswith("worker processes watched: ") for e in report["events"])
    assert {stats["pid"] for stats in report["loops"]} == pids  # type: ignore[union-attr]
    (site,) = report["sites"]  # type: ignore[misc]
    assert site["count"] == 4 and site["blocks"] == 4


def test_a_killed_worker_loses_only_what_it_had_not_written(tmp_path: Path) -> None:
    """SIGKILL after a block: the block is in, and the report says the worker did not finish."""
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent("""
        import asyncio, time

        async def main():
            await asyncio.sleep(0.02)
            time.sleep(0.12)  # blocks before being killed
            await asyncio.sleep(60)

        asyncio.run(main())
    """))
    with loopwatch.watch(threshold=0.05, subprocesses=True) as session:
        child = subprocess.Popen([sys.executable, str(script)])
        deadline = time.monotonic() + 60
        while not session.report().blocks and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
    report = session.report()
    (block,) = report.blocks
    assert block.pid == child.pid and block.site is not None and "victim.py" in block.site
    assert any(f"pid {child.pid} ended without finishing its report" in e for e in report.events)


@pytest.mark.parametrize("value", ["yes", "{not json", '{"dir": "/no/such/folder"}', "{}"])
def test_the_variable_set_by_mistake_does_nothing(value: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; print('ok', 'loopwatch' in sys.modules)"],
        env=dict(os.environ, **{ENV: value}), capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok False\n", "")


def test_without_the_variable_the_startup_hook_imports_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; print('loopwatch' in sys.modules)"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.stdout == "False\n", result.stderr


def test_the_variable_is_withdrawn_when_the_watch_ends() -> None:
    assert ENV not in os.environ
    with loopwatch.watch(threshold=0.05, subprocesses=True):
        assert ENV in os.environ
    assert ENV not in os.environ


def test_a_worker_that_cannot_write_is_named_and_carries_on(tmp_path: Path) -> None:
    """A child whose writes fail (here: a file size limit of 0) keeps running and exits
    normally; the parent's report names it."""
    script = tmp_path / "limited.py"
    script.write_text(textwrap.dedent("""
        import asyncio, resource, signal, time

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

        async def main():
            await asyncio.sleep(0.02)
            time.sleep(0.12)  # blocks
            await asyncio.sleep(0.02)

        asyncio.run(main())
        print("carried on")
    """))
    with loopwatch.watch(threshold=0.05, subprocesses=True) as session:
        child = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                               timeout=60)
    assert (child.returncode, child.stdout) == (0, "carried on\n"), child.stderr
    assert "Traceback" not in child.stderr
    report = session.report()
    assert not report.blocks
    assert any(e.startswith("pid ") and "could not write its findings" in e
               for e in report.events), report.events


def test_the_folder_of_a_killed_parent_is_removed_by_the_next_watch(tmp_path: Path) -> None:
    """A watching process killed outright cannot remove its folder: the next watch does,
    and leaves those of processes still running."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop(ENV, None)
    program = ("import json, os, sys, time, loopwatch\n"
               "with loopwatch.watch(subprocesses=True):\n"
               "    print(json.loads(os.environ['" + ENV + "'])['dir'], flush=True)\n"
               "    time.sleep(60)\n")
    killed = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                              text=True)
    alive = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert killed.stdout is not None and alive.stdout is not None
        orphan, kept = Path(killed.stdout.readline().strip()), Path(alive.stdout.readline().strip())
        killed.kill()
        killed.wait()
        assert orphan.is_dir() and kept.is_dir()
        sweep = ("import loopwatch\n"
                 "with loopwatch.watch(subprocesses=True):\n"
                 "    pass\n")
        subprocess.run([sys.executable, "-c", sweep], env=env, check=True, timeout=60)
        assert not orphan.exists()
        assert kept.is_dir()
    finally:
        for process in (killed, alive):
            process.kill()
            process.communicate()
