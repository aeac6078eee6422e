"""Garbage-collection pauses under pytest --loopwatch, and under ``loopwatch run``.

A collection lands in whichever test happens to be running: it is not that
test's fault, so it is listed (report section, terminal summary, JSON) but
does not fail or warn its test unless asked for (``--loopwatch-count-gc``,
ini ``loopwatch_count_gc``, ``LOOPWATCH_PYTEST_COUNT_GC``, or the marker's
``count_gc=True``).

The pause is real: two million self-referencing objects, built with the rest of
the heap frozen and the collector off (so no collection runs early), then
dropped and collected in one loop iteration: 100 ms or more, against a 50 ms
threshold (at 20 ms the plugin sometimes judges a test before its last block
reaches it, with or without a collection: a separate problem). Their list is in
a cycle too, so that dropping it costs nothing (clearing a million references
would take the iteration's first milliseconds, where the line running is not
the collection's). The suites run in a subprocess: the freezing touches nothing
here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import schemas

from loopwatch.pytest_plugin import GC_EXCUSE, SettingsError, resolve_settings

pytest_plugins = "pytester"
pytestmark = pytest.mark.usefixtures("clean_loopwatch_env")

WATCH = ("--loopwatch", "--loopwatch-threshold=0.05", "--loopwatch-json=out.json", "-rf")

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

#: The two million self-referencing objects, and the collection of them on the loop.
GARBAGE = """
import asyncio
import gc


class Node:
    __slots__ = ("peer",)  # small: twice as many for the memory of one with a __dict__

    def __init__(self):
        self.peer = self  # a cycle: only the collector frees it


def make_garbage():
    gc.collect()
    gc.freeze()  # keep the rest of the heap out of the collection
    gc.disable()  # and no collection before the one on the loop
    nodes = [Node() for _ in range(2_000_000)]
    nodes.append(nodes)  # the list is in a cycle too: dropping it frees nothing
    return [nodes]  # emptying this box drops the last reference, at no cost


async def collect(box):
    await asyncio.sleep(0)
    box.clear()
    gc.collect()  # the collection
    await asyncio.sleep(0)
"""

SUITE = GARBAGE + """

import time

import pytest


@pytest.mark.asyncio
async def test_blocks():
    time.sleep(0.15)  # blocking


@pytest.fixture
def garbage():
    try:
        yield make_garbage()
    finally:
        gc.enable()
        gc.unfreeze()


@pytest.mark.asyncio
async def test_collects(garbage):
    await collect(garbage)
"""

MARKED = """

@pytest.mark.asyncio
@pytest.mark.loopwatch(count_gc=True)
async def test_collects_counted(garbage):
    await collect(garbage)
"""

NAME = "test_gc_suite"


def line_of(source: str, needle: str) -> int:
    """1-based line number of the first line containing needle."""
    for number, text in enumerate(source.splitlines(), 1):
        if needle in text:
            return number
    raise AssertionError(f"{needle!r} not in source")


def suite(pytester: pytest.Pytester, ini: str = "", marked: bool = True) -> str:
    # pytester drops leading blank lines too
    source = (SUITE + MARKED * marked).lstrip("\n")
    pytester.makeini(INI + textwrap.dedent(ini))
    pytester.makepyfile(**{NAME: source})
    return source


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # hypothesis's plugin alone takes about a second to import: not needed here
    return pytester.runpytest_subprocess("-p", "no:hypothesispytest", *args, timeout=120)


def blocks_of(report: dict[str, Any], test: str) -> list[dict[str, Any]]:
    return report["tests"].get(f"{NAME}.py::{test}", [])  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["default", "warn", "option", "ini", "env"])
def test_a_gc_pause_is_listed_but_counts_only_when_asked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """By default the pause is listed, with its excuse, and its test passes; counted (from
    the command line, the ini file or the environment) it fails its test. The marker's
    count_gc=True counts it for one test; a test that blocks fails either way."""
    source = suite(pytester, ini="loopwatch_count_gc = true\n" if how == "ini" else "")
    args = list(WATCH)
    if how == "option":
        args.append("--loopwatch-count-gc")
    elif how == "env":
        monkeypatch.setenv("LOOPWATCH_PYTEST_COUNT_GC", "1")
    elif how == "warn":
        args.append("--loopwatch-mode=warn")
    result = run(pytester, *args)
    counted = how in ("option", "ini", "env")
    trigger = f"{NAME}.py:{line_of(source, '# the collection')}"

    report = schemas.read(pytester.path / "out.json", "pytest-report")
    for test in ("test_collects", "test_collects_counted"):
        (block,) = blocks_of(report, test)
        assert block["kind"] == "gc"
        assert block["site"] == "<garbage collection>"
        assert block["function"] == "garbage collection (generation 2)"
        assert block["gc_trigger"].endswith(trigger)
        assert block["phase"] == "call"
        expected = None if counted or test == "test_collects_counted" else GC_EXCUSE
        assert block["excuse"] == expected
    (blocking,) = blocks_of(report, "test_blocks")
    assert (blocking["kind"], blocking["excuse"]) == ("wait", None)

    flag = "warned" if how == "warn" else "failed"
    assert report["flagged"] == {
        f"{NAME}.py::{test}": flag
        for test in ["test_collects"] * counted + ["test_collects_counted", "test_blocks"]
    }
    result.stdout.fnmatch_lines([
        "*loopwatch: worst blocking sites*",
        f"*<garbage collection> in garbage collection (generation 2) (gc) - {NAME}.py::*",
    ])
    note = "loopwatch: note: garbage-collection pauses are listed but not counted*"
    if counted:
        source_of = {
            "option": "command line option --loopwatch-count-gc",
            "ini": "ini option loopwatch_count_gc",
            "env": "environment variable LOOPWATCH_PYTEST_COUNT_GC",
        }[how]
        result.stdout.fnmatch_lines([f"loopwatch: threshold=50 ms *, count-gc ({source_of})*"])
        result.stdout.no_fnmatch_line(note)
    else:
        result.stdout.no_fnmatch_line("loopwatch: threshold=*count-gc*")
        result.stdout.fnmatch_lines([note])

    if how == "warn":
        result.assert_outcomes(passed=3, warnings=2)
        warnings = result.stdout.str().split("warnings summary", 1)[1]
        assert f"{NAME}.py::test_collects_counted blocked the event loop" in warnings
        assert f"{NAME}.py::test_collects blocked" not in warnings
        return
    failed = {"test_collects_counted", "test_blocks"} | ({"test_collects"} if counted else set())
    result.assert_outcomes(failed=len(failed), passed=3 - len(failed))
    for test in failed:
        at = "<garbage collection>" if "collects" in test else f"{NAME}.py:"
        result.stdout.fnmatch_lines([f"FAILED {NAME}.py::{test} - *blocked the event loop*{at}*"])
    if not counted:
        # The passing test's pause is still shown: with -rP, in its report section.
        shown = run(pytester, *WATCH, "-rP", f"{NAME}.py::test_collects")
        shown.assert_outcomes(passed=1)
        shown.stdout.fnmatch_lines([
            "*: <garbage collection> in garbage collection (generation 2) ?gc, *?"
            f" ({GC_EXCUSE})",
        ])


def test_the_marker_can_stop_counting_gc_for_one_test(pytester: pytest.Pytester) -> None:
    """With --loopwatch-count-gc, @pytest.mark.loopwatch(count_gc=False) excuses one test."""
    source = suite(pytester).replace(
        "@pytest.mark.loopwatch(count_gc=True)", "@pytest.mark.loopwatch(count_gc=False)"
    )
    pytester.makepyfile(**{NAME: source})
    result = run(pytester, *WATCH, "--loopwatch-count-gc")
    result.assert_outcomes(failed=2, passed=1)
    report = schemas.read(pytester.path / "out.json", "pytest-report")
    assert [b["excuse"] for b in blocks_of(report, "test_collects_counted")] == [
        "a garbage-collection pause (not counted: @pytest.mark.loopwatch(count_gc=False))"
    ]
    assert [b["excuse"] for b in blocks_of(report, "test_collects")] == [None]


@pytest.mark.parametrize("count", [False, True])
def test_a_gc_pause_is_in_the_baseline_only_when_counted(
    pytester: pytest.Pytester, count: bool
) -> None:
    """--loopwatch-update-baseline leaves out the pauses that do not count; counted ones
    are written under <garbage collection>, and then pass against the baseline."""
    suite(pytester, marked=False)
    args = [*WATCH, "--loopwatch-baseline=known.json"] + ["--loopwatch-count-gc"] * count
    run(pytester, *args, "--loopwatch-update-baseline").assert_outcomes(passed=2)
    data = schemas.read(pytester.path / "known.json", "baseline")
    gc_pause = {"kind": "block", "file": "<garbage collection>",
                "function": "garbage collection (generation 2)"}
    blocking = {"kind": "block", "file": f"{NAME}.py", "function": "test_blocks"}
    assert data["findings"] == ([gc_pause] if count else []) + [blocking]
    judged = run(pytester, *args)
    judged.assert_outcomes(passed=2)
    judged.stdout.no_fnmatch_line("*stale*")


# -- settings -------------------------------------------------------------------------


def test_count_gc_setting_precedence() -> None:
    """Off by default; the command line beats the environment, which beats the ini file."""
    assert resolve_settings(env={}).count_gc is False
    ini = {"count_gc": "true"}
    assert resolve_settings(env={}, ini=ini).source("count_gc") == "ini option loopwatch_count_gc"
    env = {"LOOPWATCH_PYTEST_COUNT_GC": "no"}
    settings = resolve_settings(env=env, ini=ini)
    assert settings.count_gc is False
    assert settings.source("count_gc") == "environment variable LOOPWATCH_PYTEST_COUNT_GC"
    settings = resolve_settings(cli={"count_gc": True}, env=env, ini=ini)
    assert settings.count_gc is True
    assert settings.source("count_gc") == "command line option --loopwatch-count-gc"
    # a modifier, like the threshold: it does not switch the plugin on by itself
    assert resolve_settings(cli={"count_gc": True}, env={}).enabled is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ini": {"count_gc": "maybe"}},
         "invalid loopwatch count_gc 'maybe' from ini option loopwatch_count_gc"),
        ({"env": {"LOOPWATCH_PYTEST_COUNT_GC": "sometimes"}},
         "invalid loopwatch count_gc 'sometimes' from environment variable "
         "LOOPWATCH_PYTEST_COUNT_GC"),
    ],
)
def test_a_bad_count_gc_names_value_and_source(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("env", {})
    with pytest.raises(SettingsError) as caught:
        resolve_settings(**kwargs)
    assert str(caught.value).startswith(message)


def test_count_gc_is_documented_and_checked(pytester: pytest.Pytester) -> None:
    """--help lists the option and the ini key, --markers the marker's count_gc; a bad
    ini value stops the run with a usage error, a bad marker value fails its test."""
    pytester.makeini(INI)
    helped = run(pytester, "--help")
    helped.stdout.fnmatch_lines(["*--loopwatch-count-gc*", "  loopwatch_count_gc*"])
    markers = run(pytester, "--markers")
    markers.stdout.fnmatch_lines([
        "@pytest.mark.loopwatch(threshold=None, allow=False, strict=None, count_gc=None):*"
    ])

    pytester.makeini(INI + "loopwatch_count_gc = maybe\n")
    pytester.makepyfile(test_bad="def test_nothing():\n    pass\n")
    bad_ini = run(pytester, "--loopwatch")
    assert bad_ini.ret == pytest.ExitCode.USAGE_ERROR
    bad_ini.stderr.fnmatch_lines([
        "ERROR: invalid loopwatch count_gc 'maybe' from ini option loopwatch_count_gc*"
    ])

    pytester.makeini(INI)
    pytester.makepyfile(test_bad=textwrap.dedent("""
        import pytest

        @pytest.mark.loopwatch(count_gc="yes")
        def test_marked():
            pass
    """))
    bad_marker = run(pytester, "--loopwatch", "-rE")
    bad_marker.assert_outcomes(errors=1)  # it fails its setup
    bad_marker.stdout.fnmatch_lines([
        "ERROR test_bad.py::test_marked - *invalid loopwatch count_gc 'yes' from "
        "@pytest.mark.loopwatch on test_bad.py::test_marked: expected True or False*"
    ])


# -- loopwatch run ---------------------------------------------------------------------


PROGRAM = GARBAGE + """

garbage = make_garbage()
asyncio.run(collect(garbage))
"""


def test_loopwatch_run_names_a_gc_pause(tmp_path: Path) -> None:
    """loopwatch run: one block, of kind gc at <garbage collection>, triggered at the
    program's line; the console says it was garbage collection."""
    source = PROGRAM.lstrip("\n")
    (tmp_path / "prog.py").write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "loopwatch", "run", "--threshold", "0.02", "--json", "out.json",
         "prog.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = schemas.read(tmp_path / "out.json")
    (block,) = report["blocks"]
    assert block["kind"] == "gc"
    assert block["site"] == "<garbage collection>"
    assert block["gc_trigger"].endswith(f"prog.py:{line_of(source, '# the collection')}")
    assert block["gc_time"] > 0.5 * block["duration"]
    assert "garbage collection" in result.stderr
    assert block["gc_generation"] == 2
