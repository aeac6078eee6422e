"""The pytest plugin, run the way users run it: small generated suites in a subprocess.

Blocking calls are real (``time.sleep(0.15)`` against a 50 ms threshold, three
times over it); loops that should pass only ever await, so the margins are wide.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import schemas

from loopwatch.pytest_plugin import SettingsError, resolve_settings

pytest_plugins = "pytester"
pytestmark = pytest.mark.usefixtures("clean_loopwatch_env")

WATCH = ("--loopwatch", "--loopwatch-threshold=0.05")

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
"""


def write(pytester: pytest.Pytester, name: str, source: str, *, mode: str = "strict",
          ini: str = "") -> str:
    """Write a test module and a pytest.ini; return the module's source."""
    source = textwrap.dedent(source).lstrip("\n")  # pytester drops leading blank lines too
    pytester.makeini(INI.format(mode=mode) + textwrap.dedent(ini))
    pytester.makepyfile(**{name: source})
    return source


def line_of(source: str, needle: str) -> int:
    """1-based line number of the first line containing needle."""
    for number, text in enumerate(source.splitlines(), 1):
        if needle in text:
            return number
    raise AssertionError(f"{needle!r} not in source")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # hypothesis's plugin alone takes about a second to import: not needed here
    return pytester.runpytest_subprocess("-p", "no:hypothesispytest", *args, timeout=120)


BASIC = """
    import asyncio
    import time

    import pytest


    @pytest.mark.asyncio
    async def test_blocks():
        time.sleep(0.15)  # blocking


    @pytest.mark.asyncio
    async def test_awaits():
        await asyncio.sleep(0.01)


    def test_sync_sleep_is_not_a_loop_block():
        time.sleep(0.15)
"""


# -- activation -------------------------------------------------------------------------


def test_inactive_unless_asked(pytester: pytest.Pytester) -> None:
    """Without --loopwatch nothing is watched: blocking tests pass and no thread starts."""
    write(pytester, "test_inactive", BASIC + """
    def test_nothing_started():
        import threading
        assert "loopwatch-watchdog" not in [t.name for t in threading.enumerate()]
    """)
    result = run(pytester)
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("*loopwatch:*")


def test_import_starts_nothing(pytester: pytest.Pytester) -> None:
    """Importing the plugin patches no loop and starts no thread."""
    code = textwrap.dedent("""
        import asyncio, threading
        import loopwatch.pytest_plugin
        base = asyncio.base_events.BaseEventLoop
        patched = [n for n in ("run_forever", "_run_once")
                   if getattr(base.__dict__[n], "__loopwatch__", False)]
        assert not patched, patched
        assert [t.name for t in threading.enumerate()] == ["MainThread"]
        print("clean")
    """)
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["clean"])


# -- modes -------------------------------------------------------------------------------


def test_fail_mode_fails_blocking_test_with_line_and_stack(pytester: pytest.Pytester) -> None:
    """A test that blocks the loop fails, naming loopwatch, the duration, the line and stack."""
    source = write(pytester, "test_failing", BASIC + """

    @pytest.mark.asyncio
    async def test_blocks_and_fails_on_its_own():
        time.sleep(0.15)  # blocking too
        assert 1 == 2
    """)
    where = f"test_failing.py:{line_of(source, '# blocking')}"
    also = f"test_failing.py:{line_of(source, '# blocking too')}"
    result = run(pytester, *WATCH)
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines([
        "loopwatch: threshold=50 ms (command line option --loopwatch-threshold), mode=fail*",
        "*_ test_blocks _*",
        f"loopwatch: blocked the event loop for * ms at {where} (threshold 50 ms)",
        f"* ms in the test: {where} in test_blocks [[]wait*",
        "    time.sleep(0.15)  # blocking",
        "  stack (innermost last):",
        f"    {where} in test_blocks  <-",
        # a test failing for its own reasons keeps its failure; the block is a section
        "*_ test_blocks_and_fails_on_its_own _*",
        "E       assert 1 == 2",
        "*- loopwatch -*",
        f"* ms in the test: {also} in test_blocks_and_fails_on_its_own [[]wait*",
        "*loopwatch: worst blocking sites*",
        "loopwatch: 2 block(s) over 50 ms in 2 of 4 test(s)*1 test(s) failed (mode fail)",
        "FAILED test_failing.py::test_blocks - Failed: loopwatch: blocked the event loop*",
        "FAILED test_failing.py::test_blocks_and_fails_on_its_own - assert 1 == 2",
    ])
    result.stdout.fnmatch_lines([
        f"*1 ** ms ** ms  {where} in test_blocks (wait) - test_failing.py::test_blocks",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_warn_mode_warns_at_the_blocking_line(pytester: pytest.Pytester) -> None:
    """Warn mode passes the test and issues a LoopwatchWarning located at the blocking call."""
    source = write(pytester, "test_warning", BASIC)
    where = f"test_warning.py:{line_of(source, '# blocking')}"
    result = run(pytester, *WATCH, "--loopwatch-mode=warn")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines([
        "*warnings summary*",
        "test_warning.py::test_blocks",
        f"  *{where}: LoopwatchWarning: loopwatch: test_warning.py::test_blocks blocked the "
        f"event loop for * ms (threshold 50 ms) in the test at {where} in test_blocks",
        "loopwatch: 1 block(s) over 50 ms*1 test(s) warned (mode warn)",
    ])
    assert result.ret == pytest.ExitCode.OK


def test_warn_mode_obeys_warning_filters(pytester: pytest.Pytester) -> None:
    """Under filterwarnings=error the warning fails the test (cleanly); a filter can relax it."""
    write(pytester, "test_strict", BASIC, ini="filterwarnings = error")
    result = run(pytester, *WATCH, "--loopwatch-mode=warn")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines([
        "loopwatch: blocked the event loop for * ms at test_strict.py:*",
        "*turned into an error by a warnings filter*default::loopwatch.pytest_plugin"
        ".LoopwatchWarning*",
    ])
    result.stdout.no_fnmatch_line("*Traceback*")

    pytester.makeini(INI.format(mode="strict") + textwrap.dedent("""
        filterwarnings =
            error
            default::loopwatch.pytest_plugin.LoopwatchWarning
    """))
    relaxed = run(pytester, *WATCH, "--loopwatch-mode=warn")
    relaxed.assert_outcomes(passed=3, warnings=1)


def test_report_mode_summary_lists_worst_sites(pytester: pytest.Pytester) -> None:
    """Report mode fails nothing; the summary lists sites by total time, with their tests."""
    source = write(pytester, "test_sites", """
        import time

        import pytest


        def helper():
            time.sleep(0.15)  # shared site


        @pytest.mark.asyncio
        async def test_first():
            helper()


        @pytest.mark.asyncio
        async def test_second():
            helper()


        @pytest.mark.asyncio
        async def test_once():
            time.sleep(0.1)  # single site
    """)
    shared = f"test_sites.py:{line_of(source, '# shared site')}"
    single = f"test_sites.py:{line_of(source, '# single site')}"
    result = run(pytester, *WATCH, "--loopwatch-mode=report")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "*= loopwatch: worst blocking sites =*",
        " count      total        max  site",
        f"     2 * ms * ms  {shared} in helper (wait) - "
        "test_sites.py::test_first (+1 more)",
        f"     1 * ms * ms  {single} in test_once (wait) - test_sites.py::test_once",
        "loopwatch: 3 block(s) over 50 ms in 3 of 3 test(s)*blocked in total (mode report)",
    ])
    result.stdout.no_fnmatch_line("*LoopwatchWarning*")
    assert result.ret == pytest.ExitCode.OK


# -- settings -----------------------------------------------------------------------------


def test_settings_precedence_cli_env_ini_default() -> None:
    """Each setting comes from the command line, else the environment, else the ini file."""
    assert resolve_settings(env={}) == resolve_settings(cli={}, env={}, ini={})
    default = resolve_settings(env={})
    assert (default.enabled, default.threshold, default.mode, default.json_path) == (
        False, 0.1, "fail", None)
    ini = {"enabled": "true", "threshold": "0.3", "mode": "report", "json_path": "ini.json"}
    env = {"LOOPWATCH_THRESHOLD": "0.2", "LOOPWATCH_PYTEST_MODE": "warn"}
    cli = {"threshold": 0.05, "mode": None, "enabled": None}
    settings = resolve_settings(cli=cli, env=env, ini=ini)
    assert (settings.enabled, settings.threshold, settings.mode, settings.json_path) == (
        True, 0.05, "warn", "ini.json")
    assert settings.source("threshold") == "command line option --loopwatch-threshold"
    assert settings.source("mode") == "environment variable LOOPWATCH_PYTEST_MODE"
    assert settings.source("enabled") == "ini option loopwatch"
    assert resolve_settings(cli={"enabled": False}, env={"LOOPWATCH_PYTEST": "1"}).enabled is False
    with pytest.raises(AttributeError):
        settings.threshold = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ini": {"threshold": "abc"}},
         "invalid loopwatch threshold 'abc' from ini option loopwatch_threshold"),
        ({"env": {"LOOPWATCH_THRESHOLD": "-1"}},
         "invalid loopwatch threshold '-1' from environment variable LOOPWATCH_THRESHOLD"),
        ({"env": {"LOOPWATCH_PYTEST_MODE": "loud"}},
         "invalid loopwatch mode 'loud' from environment variable LOOPWATCH_PYTEST_MODE: "
         "expected one of fail, warn, report"),
        ({"ini": {"enabled": "maybe"}},
         "invalid loopwatch enabled 'maybe' from ini option loopwatch"),
    ],
)
def test_settings_errors_name_value_and_source(kwargs: dict, message: str) -> None:
    """A bad value is reported with the setting, the value and where it came from."""
    kwargs.setdefault("env", {})
    with pytest.raises(SettingsError) as caught:
        resolve_settings(**kwargs)
    assert str(caught.value).startswith(message)


def test_settings_from_env_and_ini_in_a_real_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ini switches it on, the environment beats ini, the command line beats both."""
    write(pytester, "test_layers", BASIC, ini="""
        loopwatch = true
        loopwatch_threshold = 0.5
        loopwatch_mode = report
    """)
    monkeypatch.setenv("LOOPWATCH_THRESHOLD", "0.05")
    monkeypatch.setenv("LOOPWATCH_PYTEST_MODE", "fail")
    result = run(pytester)
    result.stdout.fnmatch_lines([
        "loopwatch: threshold=50 ms (environment variable LOOPWATCH_THRESHOLD), "
        "mode=fail (environment variable LOOPWATCH_PYTEST_MODE)",
    ])
    result.assert_outcomes(failed=1, passed=2)

    overridden = run(pytester, "--loopwatch-threshold=0.3")
    overridden.stdout.fnmatch_lines(["loopwatch: threshold=300 ms (command line option*"])
    overridden.assert_outcomes(passed=3)

    switched_off = run(pytester, "--no-loopwatch")
    switched_off.assert_outcomes(passed=3)
    switched_off.stdout.no_fnmatch_line("loopwatch:*")


@pytest.mark.parametrize(
    ("args", "env", "ini", "expected"),
    [
        (("--loopwatch", "--loopwatch-threshold", "abc"), {}, "",
         "*argument --loopwatch-threshold: invalid value 'abc'*"),
        (("--loopwatch", "--loopwatch-mode", "x"), {}, "",
         "*argument --loopwatch-mode: invalid choice: 'x'*"),
        (("--loopwatch",), {}, "loopwatch_threshold = -1",
         "ERROR: invalid loopwatch threshold '-1' from ini option loopwatch_threshold*"),
        (("--loopwatch",), {"LOOPWATCH_SAMPLE_INTERVAL": "soon"}, "",
         "ERROR: invalid loopwatch sample_interval 'soon' from environment variable "
         "LOOPWATCH_SAMPLE_INTERVAL*"),
    ],
    ids=["cli-threshold", "cli-mode", "ini-threshold", "core-env"],
)
def test_bad_settings_are_usage_errors(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: dict[str, str],
    ini: str,
    expected: str,
) -> None:
    """A bad option stops the run at start-up with a usage error naming it, no traceback."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write(pytester, "test_never_runs", BASIC, ini=ini)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_options_and_marker_are_documented(pytester: pytest.Pytester) -> None:
    """--help lists the options and ini keys; --markers documents the marker's signature."""
    pytester.makeini(INI.format(mode="strict"))
    helped = run(pytester, "--help")
    helped.stdout.fnmatch_lines([
        "loopwatch: find what blocks the asyncio event loop:",
        "*--loopwatch *Watch the asyncio event loop*",
        "*--loopwatch-threshold=S*",
        "*--loopwatch-mode={fail,warn,report}*",
        "*--loopwatch-json=PATH*",
        "*--loopwatch-strict*",
        "*--loopwatch-baseline=PATH*",
        "*--loopwatch-update-baseline*",
    ])
    for key in ("loopwatch ", "loopwatch_threshold", "loopwatch_mode", "loopwatch_json",
                "loopwatch_strict", "loopwatch_baseline", "loopwatch_allow"):
        helped.stdout.fnmatch_lines([f"  {key}*"])
    markers = run(pytester, "--markers")
    markers.stdout.fnmatch_lines(
        ["@pytest.mark.loopwatch(threshold=None, allow=False, strict=None, count_gc=None):*"]
    )


# -- the marker and the fixture --------------------------------------------------------------


def test_marker_threshold_and_allow(pytester: pytest.Pytester) -> None:
    """The marker raises or lowers the threshold for one test, or allows its blocks."""
    write(pytester, "test_marked", """
        import asyncio
        import time

        import pytest


        @pytest.mark.asyncio
        async def test_unmarked_under_run_threshold():
            time.sleep(0.1)


        @pytest.mark.loopwatch(threshold=0.03)
        @pytest.mark.asyncio
        async def test_lower_threshold():
            time.sleep(0.1)


        @pytest.mark.asyncio
        async def test_unmarked_over_run_threshold():
            time.sleep(0.3)


        @pytest.mark.loopwatch(threshold=0.5)
        @pytest.mark.asyncio
        async def test_higher_threshold():
            time.sleep(0.3)


        @pytest.mark.loopwatch(allow=True)
        @pytest.mark.asyncio
        async def test_allowed():
            time.sleep(0.3)


        @pytest.mark.loopwatch(threshold="soon")
        def test_bad_marker():
            pass
    """)
    result = run(pytester, "--loopwatch", "--loopwatch-threshold=0.2", "-rA")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    result.stdout.fnmatch_lines([
        "FAILED test_marked.py::test_lower_threshold - Failed: loopwatch: blocked the event "
        "loop for * ms at test_marked.py:* (threshold 30 ms)",
        "FAILED test_marked.py::test_unmarked_over_run_threshold - Failed: loopwatch: *",
    ], consecutive=False)
    result.stdout.fnmatch_lines([
        "*invalid loopwatch threshold 'soon' from @pytest.mark.loopwatch on "
        "test_marked.py::test_bad_marker*",
    ])
    # an allowed test's blocks are still reported, with the reason
    result.stdout.fnmatch_lines([
        "*_ test_allowed _*",
        "*- loopwatch -*",
        "(allowed by @pytest.mark.loopwatch(allow=True))",
        "* ms in the test: test_marked.py:* in test_allowed*",
    ])


FIXTURE_SUITE = """
    import asyncio
    import time

    import pytest


    @pytest.mark.loopwatch(allow=True)
    def test_sync_run(loopwatch):
        async def main():
            time.sleep(0.15)  # sync run site

        asyncio.run(main())
        assert [b.site.rsplit("/", 1)[-1] for b in loopwatch.blocks] == ["{name}.py:{sync}"]
        assert 0.14 < loopwatch.blocks[0].duration < 1.0


    @pytest.mark.loopwatch(allow=True)
    @pytest.mark.asyncio
    async def test_async(loopwatch):
        assert loopwatch.blocks == []
        time.sleep(0.15)  # async site
        await asyncio.sleep(0)  # let the iteration end, so that the block is known
        assert [b.function for b in loopwatch.blocks] == ["test_async"]


    def test_quiet(loopwatch):
        asyncio.run(asyncio.sleep(0.01))
        assert loopwatch.blocks == []
"""


@pytest.mark.parametrize("active", [True, False], ids=["with-loopwatch", "without"])
def test_fixture_gives_the_tests_blocks(pytester: pytest.Pytester, active: bool) -> None:
    """The loopwatch fixture lists the test's own blocks, with or without --loopwatch."""
    name = "test_fixture_blocks"
    probe = textwrap.dedent(FIXTURE_SUITE).lstrip("\n")
    sync = line_of(probe, "# sync run site")
    write(pytester, name, FIXTURE_SUITE.replace("{name}", name).replace("{sync}", str(sync)))
    result = run(pytester, *(WATCH if active else ()))
    result.assert_outcomes(passed=3)


def test_fixture_setup_and_teardown_blocks_are_attributed(pytester: pytest.Pytester) -> None:
    """Blocks in fixtures name the fixture and the phase, fail the test or its teardown."""
    source = write(pytester, "test_fixtures", """
        import asyncio
        import time

        import pytest
        import pytest_asyncio


        @pytest_asyncio.fixture
        async def slow_setup():
            time.sleep(0.15)  # setup site
            yield


        @pytest_asyncio.fixture
        async def slow_teardown():
            yield
            time.sleep(0.15)  # teardown site


        @pytest.fixture
        def sync_fixture_running_a_loop():
            async def prepare():
                time.sleep(0.15)  # sync fixture site

            asyncio.run(prepare())


        @pytest.mark.asyncio
        async def test_uses_slow_setup(slow_setup):
            await asyncio.sleep(0)


        @pytest.mark.asyncio
        async def test_uses_slow_teardown(slow_teardown):
            await asyncio.sleep(0)


        def test_uses_sync_fixture(sync_fixture_running_a_loop):
            pass
    """)
    setup = f"test_fixtures.py:{line_of(source, '# setup site')}"
    teardown = f"test_fixtures.py:{line_of(source, '# teardown site')}"
    sync = f"test_fixtures.py:{line_of(source, '# sync fixture site')}"
    result = run(pytester, *WATCH, "--loopwatch-json=out/blocks.json")
    result.assert_outcomes(failed=2, passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*_ ERROR at teardown of test_uses_slow_teardown _*",
        f"loopwatch: blocked the event loop for * ms at {teardown} (threshold 50 ms)",
        f"* ms in teardown of fixture 'slow_teardown': {teardown} in slow_teardown*",
    ])
    result.stdout.fnmatch_lines([
        "*_ test_uses_slow_setup _*",
        f"* ms in setup of fixture 'slow_setup': {setup} in slow_setup*",
        "*_ test_uses_sync_fixture _*",
        f"* ms in setup of fixture 'sync_fixture_running_a_loop': {sync} in prepare*",
    ])
    data = schemas.read(pytester.path / "out" / "blocks.json", "pytest-report")
    found = {
        (nodeid, b["phase"], b["fixture"], b["fixture_action"], b["site"].rsplit("/", 1)[-1])
        for nodeid, blocks in data["tests"].items()
        for b in blocks
    }
    assert found == {
        ("test_fixtures.py::test_uses_slow_setup", "setup", "slow_setup", "setup", setup),
        ("test_fixtures.py::test_uses_slow_teardown", "teardown", "slow_teardown", "teardown",
         teardown),
        ("test_fixtures.py::test_uses_sync_fixture", "setup", "sync_fixture_running_a_loop",
         "setup", sync),
    }
    assert data["schema"] == 1 and data["threshold"] == 0.05 and data["tests_run"] == 3
    assert sorted(s["site"].rsplit("/", 1)[-1] for s in data["sites"]) == sorted(
        [setup, teardown, sync])
    assert all(0.14 < b["duration"] < 1.0 for blocks in data["tests"].values() for b in blocks)


# -- runners ----------------------------------------------------------------------------------


SCOPES = """
    import asyncio
    import time

    import pytest


    @pytest.mark.asyncio(loop_scope="module")
    async def test_module_fine():
        await asyncio.sleep(0.01)


    def test_sync_pause_between_uses_of_the_module_loop():
        time.sleep(0.3)


    @pytest.mark.asyncio(loop_scope="module")
    async def test_module_fine_after_pause():
        await asyncio.sleep(0.01)


    @pytest.mark.asyncio(loop_scope="module")
    async def test_module_block():
        time.sleep(0.15)


    @pytest.mark.asyncio(loop_scope="session")
    async def test_session_block():
        time.sleep(0.15)


    @pytest.mark.asyncio(loop_scope="session")
    async def test_session_fine():
        await asyncio.sleep(0.01)


    @pytest.mark.asyncio
    async def test_function_block():
        time.sleep(0.15)


    @pytest.mark.asyncio
    async def test_function_fine():
        await asyncio.sleep(0.01)
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_every_loop_scope(pytester: pytest.Pytester, mode: str) -> None:
    """Blocking tests fail and the others pass in every loop scope, in strict and auto mode."""
    source = SCOPES
    if mode == "auto":
        source += """

    async def test_auto_block_without_marker():
        time.sleep(0.15)
"""
    write(pytester, "test_scopes", source, mode=mode)
    result = run(pytester, *WATCH, "-rfE")
    blocking = ["test_module_block", "test_session_block", "test_function_block"]
    if mode == "auto":
        blocking.append("test_auto_block_without_marker")
    result.assert_outcomes(failed=len(blocking), passed=5)
    result.stdout.fnmatch_lines(
        [f"FAILED test_scopes.py::{name} - Failed: loopwatch: blocked*" for name in blocking],
        consecutive=False,
    )


def test_other_runners(pytester: pytest.Pytester) -> None:
    """asyncio.run in a sync test, IsolatedAsyncioTestCase and anyio's plugin are watched."""
    write(pytester, "test_runners", """
        import asyncio
        import time
        import unittest

        import pytest


        def test_asyncio_run_block():
            async def main():
                time.sleep(0.15)

            asyncio.run(main())


        def test_asyncio_run_fine():
            asyncio.run(asyncio.sleep(0.01))


        class TestCase(unittest.IsolatedAsyncioTestCase):
            async def test_unittest_block(self):
                time.sleep(0.15)

            async def test_unittest_fine(self):
                await asyncio.sleep(0.01)


        @pytest.fixture
        def anyio_backend():
            return "asyncio"


        @pytest.mark.anyio
        async def test_anyio_block():
            time.sleep(0.15)


        @pytest.mark.anyio
        async def test_anyio_fine():
            await asyncio.sleep(0.01)
    """)
    result = run(pytester, *WATCH, "-rf")
    result.assert_outcomes(failed=3, passed=3)
    result.stdout.fnmatch_lines([
        "FAILED test_runners.py::test_asyncio_run_block - Failed: loopwatch: blocked*",
        "FAILED test_runners.py::TestCase::test_unittest_block - Failed: loopwatch: blocked*",
        "FAILED test_runners.py::test_anyio_block - Failed: loopwatch: blocked*",
    ], consecutive=False)


def test_uvloop(pytester: pytest.Pytester) -> None:
    """uvloop loops (pytest-asyncio loop factory, uvloop.run) are watched by heartbeat."""
    pytest.importorskip("uvloop")
    pytester.makeconftest("""
        import uvloop

        def pytest_asyncio_loop_factories(config, item):
            return {"uvloop": uvloop.new_event_loop}
    """)
    write(pytester, "test_uv", """
        import asyncio
        import time

        import pytest
        import uvloop


        @pytest.mark.asyncio
        async def test_uvloop_block():
            assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            time.sleep(0.15)


        @pytest.mark.asyncio
        async def test_uvloop_fine():
            await asyncio.sleep(0.01)


        def test_uvloop_run_block():
            async def main():
                time.sleep(0.15)

            uvloop.run(main())
    """)
    result = run(pytester, *WATCH, "-rf")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines([
        "* ms (uvloop: to within one heartbeat) in the test: test_uv.py:* in test_uvloop_block*",
    ])


def test_xdist_json_has_every_workers_blocks(pytester: pytest.Pytester) -> None:
    """With -n 2 the JSON file and the summary hold the blocks of every worker."""
    pytest.importorskip("xdist")
    pytester.makeini(INI.format(mode="strict"))
    blocking = """
        import asyncio
        import time

        import pytest


        @pytest.mark.asyncio
        async def test_block_a():
            time.sleep(0.15)


        @pytest.mark.asyncio
        async def test_block_b():
            time.sleep(0.15)


        @pytest.mark.asyncio
        async def test_fine():
            await asyncio.sleep(0.01)
    """
    pytester.makepyfile(test_one=textwrap.dedent(blocking), test_two=textwrap.dedent(blocking))
    result = run(pytester, *WATCH, "-n", "2", "--loopwatch-json=blocks.json")
    result.assert_outcomes(failed=4, passed=2)
    data = schemas.read(pytester.path / "blocks.json", "pytest-report")
    assert sorted(data["tests"]) == [
        "test_one.py::test_block_a", "test_one.py::test_block_b",
        "test_two.py::test_block_a", "test_two.py::test_block_b",
    ]
    assert data["tests_run"] == 6
    assert sorted(data["flagged"].values()) == ["failed"] * 4
    result.stdout.fnmatch_lines([
        "*loopwatch: worst blocking sites*",
        "loopwatch: 4 block(s) over 50 ms in 4 of 6 test(s)*4 test(s) failed*",
    ])


# -- never break the suite ---------------------------------------------------------------------


def test_internal_failures_degrade_without_breaking_the_suite(pytester: pytest.Pytester) -> None:
    """If watching cannot start, or the JSON cannot be written, tests still run and pass."""
    pytester.makeconftest("""
        import loopwatch.session

        def broken_start(self):
            raise RuntimeError("simulated failure")

        loopwatch.session.Session.start = broken_start
    """)
    write(pytester, "test_survives", BASIC)
    (pytester.path / "a_directory").mkdir()
    result = run(pytester, *WATCH, "--loopwatch-json=a_directory")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "loopwatch: nothing was watched",
        "loopwatch: loopwatch's pytest plugin failed in _start: RuntimeError('simulated "
        "failure'); results may be incomplete",
        "loopwatch: could not write the JSON report to *a_directory*",
    ], consecutive=False)
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("word", ["yes", "On", "0", "false", "maybe"])
def test_plugin_and_core_read_a_yes_or_no_alike(word: str) -> None:
    """One parser for flags: a word means the same to --loopwatch's env var as to the core's."""
    from loopwatch.config import Config, ConfigError

    try:
        core: bool | str = Config.resolve(env={"LOOPWATCH_PRECISE": word}).precise
    except ConfigError:
        core = "refused"
    try:
        plugin: bool | str = resolve_settings(env={"LOOPWATCH_PYTEST": word}).enabled
    except ConfigError as error:  # the plugin's SettingsError is a kind of ConfigError
        assert isinstance(error, SettingsError)
        plugin = "refused"
    assert core == plugin
