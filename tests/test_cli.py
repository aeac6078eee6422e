"""The command line, run as a user would: in a subprocess, on real scripts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import schemas

BLOCKING_SCRIPT = """
import asyncio, sys, time

async def main():
    await asyncio.sleep(0)
    time.sleep(0.15)  # the blocking line
    await asyncio.sleep(0)
    print("args", sys.argv[1:])
    {ending}

asyncio.run(main())
"""


def loopwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopwatch", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def script(tmp_path: Path, ending: str = "pass", name: str = "app.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(BLOCKING_SCRIPT.format(ending=ending)))
    return path


def test_run_reports_the_block_and_passes_arguments(tmp_path: Path) -> None:
    """run executes the script as __main__ with its arguments and reports the block."""
    script(tmp_path)
    result = loopwatch("run", "--threshold", "0.05", "--json", "out.json", "app.py", "-x", "y",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "args ['-x', 'y']" in result.stdout
    assert "loopwatch: 1 block over 50.0 ms" in result.stderr
    assert "app.py:6 in main" in result.stderr
    report = schemas.read(tmp_path / "out.json")
    (block,) = report["blocks"]
    assert block["site"].endswith("app.py:6")
    assert block["kind"] == "wait"
    assert block["task"] == "Task-1"
    assert block["coroutine"] == "main"
    assert "task Task-1 · main()" in result.stderr


@pytest.mark.parametrize(
    ("ending", "status", "stderr"),
    [
        ("sys.exit(3)", 3, None),
        ("raise ValueError('boom')", 1, "ValueError: boom"),
    ],
)
def test_report_is_written_when_the_script_exits_or_raises(
    tmp_path: Path, ending: str, status: int, stderr: str | None
) -> None:
    """The JSON is written and the script's exit status returned, however it ends."""
    script(tmp_path, ending)
    result = loopwatch("run", "--threshold", "0.05", "--json", "out.json", "app.py", cwd=tmp_path)
    assert result.returncode == status
    if stderr:
        assert stderr in result.stderr
    assert len(schemas.read(tmp_path / "out.json")["blocks"]) == 1


def test_run_module(tmp_path: Path) -> None:
    """run -m runs a module like python -m."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    script(package, name="tool.py")
    result = loopwatch("run", "--threshold", "0.05", "-m", "pkg.tool", "a", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "args ['a']" in result.stdout
    assert "tool.py:6" in result.stderr


def test_everything_after_the_module_is_the_modules(tmp_path: Path) -> None:
    """run -m MODULE -H x: options after the module go to it, as with python -m."""
    (tmp_path / "tool.py").write_text("import sys\nprint('args', sys.argv[1:])\n")
    for module in (["-m", "tool"], ["-mtool"]):
        result = loopwatch("run", "--quiet", "--threshold", "0.5", *module,
                           "-H", "127.0.0.1", "--threshold", "7", "--", "x", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "args ['-H', '127.0.0.1', '--threshold', '7', '--', 'x']" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "script not found: missing.py"),
        (["run", "-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
        (["run", "--threshold", "abc", "app.py"], "expected a number of seconds, got 'abc'"),
        (["run", "--threshold", "-1", "app.py"], "invalid loopwatch threshold -1.0"),
        (["run", "--bogus", "app.py"], "unrecognized arguments: --bogus"),
        (["run"], "run needs a script"),
        (["report", "nothing.json"], "no such report file: nothing.json"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "--live", "--mode", "log", "app.py"], "--live and --mode log both write"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Bad input gets a clear message and exit status 2, never a traceback."""
    script(tmp_path)
    result = loopwatch(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_report_renders_a_saved_report(tmp_path: Path) -> None:
    """report re-renders a JSON report saved by run."""
    script(tmp_path)
    loopwatch("run", "--threshold", "0.05", "--quiet", "--json", "out.json", "app.py",
              cwd=tmp_path)
    result = loopwatch("report", "out.json", cwd=tmp_path)
    assert result.returncode == 0
    assert "1 block over 50.0 ms" in result.stdout
    assert "app.py:6 in main" in result.stdout


def test_report_refuses_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    """A JSON file that is not a loopwatch report is refused with a clear message."""
    (tmp_path / "other.json").write_text('{"hello": 1}')
    result = loopwatch("report", "other.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not a loopwatch JSON report" in result.stderr


def test_demo_finds_five_kinds_of_block(tmp_path: Path) -> None:
    """The demo blocks five ways and loopwatch names each line."""
    result = loopwatch("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loopwatch: 5 blocks" in result.stderr
    for function in ("rate_limit", "hash_password", "parse_payload", "call_api",
                     "save_audit_log"):
        assert f"in {function}" in result.stderr, result.stderr


def test_version_and_the_program_named_as_invoked(tmp_path: Path) -> None:
    """--version; usage and errors say `loopwatch` or `python -m loopwatch`, as typed."""
    console = Path(sys.executable).with_name("loopwatch")
    if not console.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    import loopwatch as package

    for command, name in (([str(console)], "loopwatch"),
                          ([sys.executable, "-m", "loopwatch"], "python -m loopwatch")):
        version = subprocess.run([*command, "--version"], capture_output=True, text=True,
                                 timeout=60, cwd=tmp_path)
        assert (version.returncode, version.stdout) == (0, f"loopwatch {package.__version__}\n")
        missing = subprocess.run([*command, "run", "missing.py"], capture_output=True,
                                 text=True, timeout=60, cwd=tmp_path)
        assert missing.returncode == 2
        assert missing.stderr == f"{name}: error: script not found: missing.py\n"
        bad = subprocess.run([*command, "frobnicate"], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert bad.stderr.startswith(f"usage: {name} ")
        assert f"{name}: error: argument COMMAND: invalid choice" in bad.stderr


INTERRUPTED_SCRIPT = """
import asyncio, time

async def main():
    time.sleep(0.15)  # the blocking line
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize("fail_on_block", [False, True])
def test_ctrl_c_prints_the_report_without_a_traceback_and_exits_130(
    tmp_path: Path, fail_on_block: bool
) -> None:
    import signal

    (tmp_path / "app.py").write_text(textwrap.dedent(INTERRUPTED_SCRIPT))
    flags = ["--fail-on-block"] if fail_on_block else []
    process = subprocess.Popen(
        [sys.executable, "-m", "loopwatch", "run", *flags, "app.py"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()  # reaped, its pipes closed, even if it hung
    assert process.returncode == 130  # interrupted wins over --fail-on-block
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "app.py: interrupted" in stderr
    assert "loopwatch: 1 block over 100 ms" in stderr and "app.py:5 in main" in stderr


@pytest.mark.parametrize(
    ("ending", "extra", "status"),
    [
        ("pass", [], 3),  # blocked: 3
        ("sys.exit(5)", [], 3),  # blocked wins over the script's own status
        ("pass", ["--threshold", "5"], 0),  # nothing over the threshold: the script's status
        ("sys.exit(5)", ["--threshold", "5"], 5),
        ("pass", ["--threshold", "5", "--strict"], 3),  # a blocking call in strict mode
    ],
)
def test_fail_on_block_exits_3_when_anything_blocked(
    tmp_path: Path, ending: str, extra: list[str], status: int
) -> None:
    script(tmp_path, ending=ending)
    result = loopwatch("run", "--fail-on-block", *extra, "app.py", cwd=tmp_path)
    assert result.returncode == status, result.stderr


def test_run_and_report_write_the_html_page(tmp_path: Path) -> None:
    """--html on run and on report: one self-contained page naming the blocking line."""
    script(tmp_path)
    result = loopwatch("run", "--threshold", "0.05", "--json", "out.json", "--html", "run.html",
                       "app.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    again = loopwatch("report", "out.json", "--html", "report.html", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for name in ("run.html", "report.html"):
        page = (tmp_path / name).read_text()
        assert page.startswith("<!DOCTYPE html>") and "app.py:6" in page
        assert "# the blocking line" in page  # its source, read when the page was made


LAUNCHED_SCRIPT = """
import asyncio, time

async def main():
    asyncio.get_running_loop().call_soon(time.sleep, 0.15)  # a callback with no frame of its own
    await asyncio.sleep(0.3)

{run}(main())
"""


@pytest.mark.parametrize("runner", ["asyncio.run", "uvloop.run"])
def test_loopwatchs_own_launcher_and_runpy_are_never_the_program(
    tmp_path: Path, runner: str
) -> None:
    """Under the console script, no block names its launcher, runpy or loopwatch as the program."""
    launcher = Path(sys.executable).parent / "loopwatch"
    if not launcher.exists():
        pytest.skip("loopwatch's console script is not installed beside this Python")
    if runner == "uvloop.run":
        pytest.importorskip("uvloop")
    imports = "import asyncio, uvloop" if runner == "uvloop.run" else "import asyncio"
    (tmp_path / "app.py").write_text(
        textwrap.dedent(LAUNCHED_SCRIPT.format(run=runner)).replace("import asyncio", imports))
    result = subprocess.run(
        [str(launcher), "run", "--threshold", "0.05", "--json", "out.json", "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = schemas.read(tmp_path / "out.json")
    assert report["blocks"], result.stderr
    for block in report["blocks"]:
        files = {frame["file"] for stack in block["stacks"] for frame in stack["frames"]}
        files |= {frame["file"] for frame in block["frames"]}
        assert str(launcher) not in files, block
        assert not any("runpy" in name or "/loopwatch/" in name for name in files), files
        assert block["site"] is None or not block["site"].startswith(str(launcher)), block
    assert "bin/loopwatch" not in result.stderr
