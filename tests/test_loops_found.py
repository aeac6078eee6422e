"""Every loop is found, whatever the import order: uvloop imported after the watch began
(and started at once), uvloop started before it, and under ``loopwatch run``.

uvloop runs in C, so each case runs in a fresh interpreter where uvloop has not
been imported yet, as in a real program.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import schemas

pytest.importorskip("uvloop")

BLOCKS = 5

#: A program that blocks its uvloop loop BLOCKS times at one line, 120 ms each.
BLOCKING_MAIN = """
async def main():
    for _ in range({blocks}):
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # the blocking line
    await asyncio.sleep(0.05)
"""


def _python(
    head: str, tail: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run head + BLOCKING_MAIN + tail as prog.py."""
    path = tmp_path / "prog.py"
    main = BLOCKING_MAIN.format(blocks=BLOCKS)
    path.write_text(textwrap.dedent(head) + main + textwrap.dedent(tail))
    return subprocess.run([sys.executable, *args, str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _blocking_line(tmp_path: Path) -> str:
    lines = (tmp_path / "prog.py").read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if "# the blocking line" in line)
    return f"prog.py:{number}"


def _check(blocks: list[dict[str, object]], tmp_path: Path) -> None:
    line = _blocking_line(tmp_path)
    assert len(blocks) == BLOCKS, [(b["duration"], b["site"]) for b in blocks]
    for block in blocks:
        assert str(block["site"]).endswith(line)
        assert 0.1 <= float(block["duration"]) <= 0.3  # type: ignore[arg-type]


def test_uvloop_imported_after_the_watch_began_and_run_at_once(tmp_path: Path) -> None:
    result = _python("""
        import asyncio, json, sys, time
        import loopwatch
        """, """
        with loopwatch.watch(threshold=0.05) as session:
            assert "uvloop" not in sys.modules
            import uvloop
            uvloop.run(main())
        print(json.dumps(session.report().to_dict()["blocks"]))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    _check(json.loads(result.stdout.splitlines()[-1]), tmp_path)


def test_uvloop_already_running_when_the_watch_begins(tmp_path: Path) -> None:
    result = _python("""
        import asyncio, json, threading, time
        import uvloop
        import loopwatch
        """, """
        go = threading.Event()

        async def waiting():
            while not go.is_set():
                await asyncio.sleep(0.01)
            await main()

        thread = threading.Thread(target=uvloop.run, args=(waiting(),))
        thread.start()
        time.sleep(0.2)  # the loop runs
        with loopwatch.watch(threshold=0.05) as session:
            go.set()
            thread.join()
        print(json.dumps(session.report().to_dict()["blocks"]))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    _check(json.loads(result.stdout.splitlines()[-1]), tmp_path)


def test_uvloop_run_under_loopwatch_run(tmp_path: Path) -> None:
    """``loopwatch run prog.py`` where the program imports uvloop itself."""
    result = _python("""
        import asyncio, time
        import uvloop
        """, """
        uvloop.run(main())
    """, tmp_path, "-m", "loopwatch", "run", "--quiet", "--threshold", "0.05",
        "--json", "out.json")
    assert result.returncode == 0, result.stderr
    _check(schemas.read(tmp_path / "out.json")["blocks"], tmp_path)


def test_the_import_hook_is_gone_after_the_watch() -> None:
    """Nothing stays on sys.meta_path, and uvloop's class is as it was."""
    before = list(sys.meta_path)
    import loopwatch

    with loopwatch.watch(threshold=0.05):
        assert len(sys.meta_path) == len(before) + 1
    assert sys.meta_path == before
