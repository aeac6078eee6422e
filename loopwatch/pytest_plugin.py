"""pytest plugin: tests that block the asyncio event loop fail (or warn), with the line.

Registered through the ``pytest11`` entry point and inactive unless asked for
(``--loopwatch``, ini ``loopwatch = true`` or ``LOOPWATCH_PYTEST=1``): loading
it only adds options and the marker; nothing is patched and no thread starts.

When active, one long-lived watch session covers the whole run. Each test's
phases (setup, call, teardown) and each fixture's setup and teardown are
windows, marked by a clock reading at each boundary. When a test's blocks are
needed (to judge the call and the teardown, or for the ``loopwatch`` fixture)
the watchdog is flushed and each block goes to the window in which its loop
iteration ended, which is what matters for loops that outlive one test
(pytest-asyncio module and session loop scopes, anyio's runner). A marker
threshold below the run's adds a short extra session for that test.

With ``--loopwatch-strict`` the session is also strict: every blocking call
on a loop's thread reaches the plugin as it is made (in that thread) and goes
to the window open at that moment. A finding (a block over the test's
threshold, a blocking call) does not count against its test when the marker
allows it, a ``loopwatch_allow`` pattern matches a frame of its stack, or it is
in the baseline. A garbage-collection pause (a block of kind ``gc``) lands in
whichever test happens to be running: it is listed but does not count unless
asked for (``--loopwatch-count-gc``, or the marker's ``count_gc=True``).

Settings are resolved once, by precedence command line > environment >
ini file > default, into an immutable :class:`Settings`; the
``@pytest.mark.loopwatch(threshold=..., allow=..., strict=..., count_gc=...)`` marker applies
on top, per test.

This module holds the hooks; its parts live in :mod:`loopwatch._pytest`:
``settings`` (options, marker, the core's config), ``windows`` (which test,
phase and fixture a finding belongs to), ``known`` (the allow-list and the
baseline), ``results`` (what the run found, its JSON and the xdist merge) and
``render`` (messages and the terminal summary).
"""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from loopwatch._format import milliseconds
from loopwatch._pytest.known import (
    AllowList,
    KnownError,
    key_of,
    read_baseline,
    write_baseline,
)
from loopwatch._pytest.render import MAX_SHOWN_BLOCKS, Renderer, group_calls
from loopwatch._pytest.results import Results
from loopwatch._pytest.settings import (
    DEFAULT_THRESHOLD,
    MARKER_SIGNATURE,
    MODES,
    NAMES,
    PytestMode,
    Settings,
    SettingsError,
    TestRules,
    core_config,
    resolve_settings,
    rules_for,
    threshold_option,
)
from loopwatch._pytest.windows import ItemState, Phase, Seen, SeenCall
from loopwatch.config import ConfigError
from loopwatch.model import Block

if TYPE_CHECKING:
    from loopwatch._core.findings import Found
    from loopwatch.model import BlockingCall
    from loopwatch.session import Session

__all__ = [
    "DEFAULT_THRESHOLD",
    "MODES",
    "LoopwatchBlocks",
    "LoopwatchPlugin",
    "LoopwatchWarning",
    "PytestMode",
    "Settings",
    "SettingsError",
    "loopwatch",
    "resolve_settings",
]

#: Name under which the active plugin object is registered with pytest.
PLUGIN_NAME = "loopwatch-active"

HELP_ENABLE = "Watch the asyncio event loop of every test for blocking calls (loopwatch)."
HELP_THRESHOLD = (
    "Seconds a loop iteration may run before it counts as blocking the loop "
    f"(default {DEFAULT_THRESHOLD})."
)
HELP_MODE = (
    "What a test that blocked the loop gets: fail (default), warn (a LoopwatchWarning) "
    "or report (terminal summary and JSON only)."
)
HELP_JSON = "Write every block of the run, per test node id, to this JSON file."
HELP_STRICT = (
    "Strict mode: any blocking call made on a thread while it runs an event loop "
    "(time.sleep, file and socket I/O, subprocess, locks...) is a finding, however short. "
    "Switches loopwatch on."
)
HELP_BASELINE = (
    "A file of known findings (blocks and blocking calls): only findings not in it "
    "fail or warn; entries no longer seen are listed as stale."
)
HELP_UPDATE_BASELINE = (
    "Write this run's findings to the baseline file (--loopwatch-baseline) and pass. "
    "Switches loopwatch on."
)
HELP_COUNT_GC = (
    "Count garbage-collection pauses against the test they land in: by default a block "
    "spent mostly in the garbage collector is listed but does not fail or warn its test."
)
HELP_ALLOW = (
    "Where blocking is accepted: lines of module.function or path/glob.py:function "
    "patterns; a finding whose stack has a matching frame does not count."
)

MARKER_DOC = (
    f"{MARKER_SIGNATURE}: loopwatch settings for this test: "
    "threshold overrides --loopwatch-threshold (seconds; lower or higher); "
    "allow=True records the test's findings without failing or warning; "
    "strict=True/False turns strict mode on or off for it; "
    "count_gc=True/False counts its garbage-collection pauses against it or not."
)

#: Why a garbage-collection pause does not count against the test it landed in.
GC_EXCUSE = "a garbage-collection pause (not counted: --loopwatch-count-gc counts them)"
GC_EXCUSE_MARKED = (
    "a garbage-collection pause (not counted: @pytest.mark.loopwatch(count_gc=False))"
)
GC_NOTE = (
    "garbage-collection pauses are listed but not counted against their tests "
    "(--loopwatch-count-gc counts them)"
)

T = TypeVar("T")


class LoopwatchWarning(UserWarning):
    """Issued in warn mode for a test that blocked the event loop for longer than the threshold.

    Filter it like any warning: in a project that turns warnings into errors,
    ``filterwarnings = default::loopwatch.pytest_plugin.LoopwatchWarning`` keeps
    warn mode non-fatal.
    """


# -- hooks that run whether or not the plugin is active ------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopwatch", "loopwatch: find what blocks the asyncio event loop")
    group.addoption(
        "--loopwatch", action="store_true", default=None, dest="loopwatch", help=HELP_ENABLE
    )
    group.addoption(
        "--no-loopwatch",
        action="store_false",
        dest="loopwatch",
        help="Do not watch, even if the ini file or LOOPWATCH_PYTEST says so.",
    )
    group.addoption(
        "--loopwatch-threshold",
        type=threshold_option,
        default=None,
        metavar="S",
        dest="loopwatch_threshold",
        help=HELP_THRESHOLD,
    )
    group.addoption(
        "--loopwatch-mode",
        choices=MODES,
        default=None,
        dest="loopwatch_mode",
        help=HELP_MODE,
    )
    group.addoption(
        "--loopwatch-json", default=None, metavar="PATH", dest="loopwatch_json", help=HELP_JSON
    )
    group.addoption(
        "--loopwatch-strict", action="store_true", default=None, dest="loopwatch_strict",
        help=HELP_STRICT,
    )
    group.addoption(
        "--loopwatch-baseline", default=None, metavar="PATH", dest="loopwatch_baseline",
        help=HELP_BASELINE,
    )
    group.addoption(
        "--loopwatch-update-baseline", action="store_true", default=False,
        dest="loopwatch_update_baseline", help=HELP_UPDATE_BASELINE,
    )
    group.addoption(
        "--loopwatch-count-gc", action="store_true", default=None, dest="loopwatch_count_gc",
        help=HELP_COUNT_GC,
    )
    # Strings, parsed here, so that a bad value is reported with its source.
    parser.addini("loopwatch", HELP_ENABLE + " (true/false)", default="")
    parser.addini("loopwatch_threshold", HELP_THRESHOLD, default="")
    parser.addini("loopwatch_mode", HELP_MODE, default="")
    parser.addini("loopwatch_json", HELP_JSON, default="")
    parser.addini("loopwatch_strict", HELP_STRICT + " (true/false)", default="")
    parser.addini("loopwatch_baseline", HELP_BASELINE, default="")
    parser.addini("loopwatch_count_gc", HELP_COUNT_GC + " (true/false)", default="")
    parser.addini("loopwatch_allow", HELP_ALLOW, type="linelist", default=[])


def _settings_from(config: pytest.Config) -> Settings:
    cli = {
        "enabled": config.getoption("loopwatch"),
        "threshold": config.getoption("loopwatch_threshold"),
        "mode": config.getoption("loopwatch_mode"),
        "json_path": config.getoption("loopwatch_json"),
        "strict": config.getoption("loopwatch_strict"),
        "baseline": config.getoption("loopwatch_baseline"),
        "update_baseline": config.getoption("loopwatch_update_baseline"),
        "count_gc": config.getoption("loopwatch_count_gc"),
    }
    ini = {name: config.getini(key) for name, (_, _, key) in NAMES.items()}
    ini["allow"] = config.getini("loopwatch_allow")
    return resolve_settings(cli=cli, env=os.environ, ini=ini)


_settings_key = pytest.StashKey[Settings]()
_settings_error_key = pytest.StashKey[str]()


#: Options whose value is a path: given apart from its value, a path that exists
#: is also taken by pytest as a test path when it looks for the rootdir and ini file.
_PATH_OPTIONS = ("--loopwatch-json", "--loopwatch-baseline")


def _warn_about_path_options(config: pytest.Config) -> None:
    args = [str(a) for a in config.invocation_params.args]
    for option, value in itertools.pairwise(args):
        if option in _PATH_OPTIONS and Path(config.invocation_params.dir, value).exists():
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"loopwatch: write {option}={value} (with '='): given apart, pytest "
                    f"also reads the existing path {value!r} as a test path when it looks "
                    "for the rootdir and the ini file, which may then not be the project's"
                ),
                stacklevel=2,
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    _warn_about_path_options(config)
    try:
        settings = _settings_from(config)
    except ConfigError as error:
        enabled = config.getoption("loopwatch")
        if enabled is None and (
            config.getoption("loopwatch_strict") or config.getoption("loopwatch_update_baseline")
        ):
            enabled = True  # these switch the plugin on (see IMPLY_ENABLED)
        if enabled is None:
            # Not asked for on the command line: only complain if it was switched on elsewhere.
            try:
                enabled = resolve_settings(
                    env={k: v for k, v in os.environ.items() if k == "LOOPWATCH_PYTEST"},
                    ini={"enabled": config.getini("loopwatch")},
                ).enabled
            except ConfigError:
                enabled = True
        if enabled or error.name == "enabled":
            raise pytest.UsageError(str(error))
        # Inactive: the loopwatch fixture reports the problem if a test asks for it.
        config.stash[_settings_error_key] = str(error)
        settings = Settings()
    config.stash[_settings_key] = settings
    if not settings.enabled:
        return
    plugin = LoopwatchPlugin(config, settings)
    config.pluginmanager.register(plugin, PLUGIN_NAME)


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(_settings_key, None)
    if settings is None or not settings.enabled:
        return None
    parts = [
        f"threshold={milliseconds(settings.threshold)} ({settings.source('threshold')})",
        f"mode={settings.mode} ({settings.source('mode')})",
    ]
    if settings.strict:
        parts.append(f"strict ({settings.source('strict')})")
    if settings.count_gc:
        parts.append(f"count-gc ({settings.source('count_gc')})")
    if settings.baseline:
        action = "updating " if settings.update_baseline else ""
        parts.append(f"{action}baseline={settings.baseline}")
    if settings.allow:
        parts.append(f"allow={len(settings.allow)} pattern(s)")
    if settings.json_path:
        parts.append(f"json={settings.json_path}")
    return "loopwatch: " + ", ".join(parts)


# -- the active plugin ------------------------------------------------------------


class LoopwatchPlugin:
    """The plugin object registered when loopwatch is switched on for a run."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._root = str(config.rootpath)
        self._render = Renderer(Path(self._root))
        self._results = Results(settings.threshold, settings.mode)
        self._results.strict = settings.strict
        self._allow = AllowList(settings.allow)
        self._baseline_path = self._baseline_file()
        if self._baseline_path is not None and not settings.update_baseline:
            try:
                self._results.baseline = read_baseline(self._baseline_path)
            except KnownError as error:
                raise pytest.UsageError(str(error))
        #: blocks heard of (in the watchdog's thread: deque appends are atomic), not yet
        #: given to a window
        self._pending: deque[Found] = deque()
        #: strict mode: blocking calls heard of (in the thread that made them), with the
        #: time they were made, not yet given to a window
        self._pending_calls: deque[tuple[float, BlockingCall]] = deque()
        self._session: Session | None = None
        self._current: ItemState | None = None
        self._flushed_at = -float("inf")
        self._finished = False
        self._worker = hasattr(config, "workerinput")
        # Built now so that a bad LOOPWATCH_* value for the core stops the run at start-up.
        self._core_config = core_config(settings.threshold, strict=settings.strict)

    def _baseline_file(self) -> Path | None:
        """The baseline's path: from the command line or the environment relative to where
        pytest was started, from the ini file relative to the rootdir."""
        if not self.settings.baseline:
            return None
        from_ini = self.settings.source("baseline").startswith("ini")
        base = self.config.rootpath if from_ini else self.config.invocation_params.dir
        return Path(base, self.settings.baseline)

    def _hear_call(self, call: BlockingCall) -> None:
        self._pending_calls.append((time.monotonic(), call))

    # -- internal failures ----------------------------------------------------------

    def _guard(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run a piece of the plugin; a failure is logged once and never reaches the test."""
        try:
            return fn(*args)
        except Exception as error:
            from loopwatch._log import log_once

            where = getattr(fn, "__name__", "?")
            message = (
                f"loopwatch's pytest plugin failed in {where}: {error!r}; "
                "results may be incomplete"
            )
            if log_once(f"pytest-plugin-{where}", message):
                self._results.errors.append(message)
            return None

    # -- session ------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.config.option.collectonly or self.config.pluginmanager.has_plugin("dsession"):
            # The xdist controller runs no tests: the workers watch, and send their results.
            return
        self._guard(self._start)

    def _start(self) -> None:
        from loopwatch.session import Session

        self._session = Session(
            self._core_config, listener=self._pending.append, log_blocks=False,
            call_listener=self._hear_call,
        ).start()
        self._results.watched = True

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._guard(self._finish_run)

    def _finish_run(self) -> None:
        if self._session is not None:
            self._drain()
            self._session.stop()
            self._drain()  # stopping flushes the last blocks
            self._results.events.extend(self._session.report().events)
            self._session = None
        self._finished = True
        if self._worker:
            self.config.workeroutput["loopwatch"] = self._results.export()  # type: ignore[attr-defined]
            return
        if self.settings.update_baseline and self._baseline_path is not None:
            self._write_baseline(self._baseline_path)
        if self.settings.json_path:
            self._write_json()

    def pytest_unconfigure(self) -> None:
        # A run interrupted before sessionfinish must still leave nothing patched behind.
        if self._session is not None:
            self._guard(self._session.stop)
            self._session = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        data = getattr(node, "workeroutput", {}).get("loopwatch")
        if isinstance(data, dict):
            self._guard(self._results.absorb, data)

    # -- windows ------------------------------------------------------------------

    def _drain(self, *, in_loop: bool = False) -> None:
        """Attribute every block that has ended so far to the window it ended in.

        ``in_loop``: called from code that may run inside a loop iteration (the
        loopwatch fixture), which must always flush.
        """
        if self._session is None:
            return
        state = self._current
        now = time.monotonic()
        shortest = self.settings.threshold
        if state is not None and state.rules.threshold < shortest:
            shortest = state.rules.threshold
        # Flushing costs tens of microseconds, twice a test. It can be skipped
        # when the last flush (made outside any loop iteration of this thread)
        # is more recent than the shortest block: an iteration of this thread's
        # loops that ended since would have had to be running at that flush.
        # A loop in another thread may then be reported a tick later.
        if in_loop or now - self._flushed_at >= shortest:
            self._session.blocks  # noqa: B018 - reading it flushes the watchdog
            if not in_loop:
                self._flushed_at = now
        calls = self._pending_calls
        while calls:
            at, call = calls.popleft()
            label = state.label_at(at) if state is not None else None
            if state is None or label is None:
                self._results.add_outside_call(SeenCall(call, "outside"))
            elif state.rules.strict:
                seen_call = SeenCall(call, *label, excuse=self._excuse(call, state.rules))
                if self._results.count_call(seen_call, state.nodeid):
                    state.calls.append(seen_call)
        pending = self._pending
        while pending:
            found = pending.popleft()
            label = state.label_at(found.end) if state is not None else None
            if state is None or label is None:
                self._results.add_outside(Seen(found.block, "outside"))
                continue
            excuse = None
            if found.block.duration > state.rules.threshold:
                excuse = self._excuse(found.block, state.rules)
            seen = Seen(found.block, *label, excuse=excuse)
            if self._results.count(seen, state.nodeid):
                state.seen.append(seen)

    def _excuse(self, finding: Block | BlockingCall, rules: TestRules) -> str | None:
        """Why a finding does not count against its test, or None; a finding that counts,
        or is only excused by the baseline, is one of the run's (for the baseline)."""
        if rules.allow:
            return "allowed by @pytest.mark.loopwatch(allow=True)"
        if isinstance(finding, Block) and finding.kind == "gc" and not rules.count_gc:
            # Not the test's doing: the collector ran in whatever test was running.
            if self.settings.count_gc:
                return GC_EXCUSE_MARKED
            if GC_NOTE not in self._results.events:
                self._results.events.append(GC_NOTE)
            return GC_EXCUSE
        pattern = self._allow.allows(finding.frames, self._root)
        if pattern is not None:
            return f"allowed by loopwatch_allow {pattern!r}"
        key = key_of(finding, self._root)
        self._results.found.add(key)
        if self.settings.update_baseline:
            return "written to the baseline"
        baseline = self._results.baseline
        if baseline is not None and key in baseline:
            return "in the baseline"
        return None

    # -- per test -------------------------------------------------------------------

    def _begin_item(self, item: pytest.Item) -> str | None:
        error = None
        settings = self.settings
        try:
            rules = rules_for(item, settings.threshold, settings.strict, settings.count_gc)
        except ConfigError as bad:
            rules = TestRules(settings.threshold, True, settings.strict, settings.count_gc)
            error = str(bad)
        state = self._current = ItemState(item.nodeid, rules)
        state.mark()
        lower_threshold = rules.threshold < settings.threshold
        strict_here = rules.strict and not settings.strict
        if (lower_threshold or strict_here) and self._session is not None:
            # The run's session only hears of blocks over the run's threshold, and of
            # blocking calls in a strict run: a short extra session does for this test.
            from loopwatch.session import Session

            ceiling = settings.threshold
            pending = self._pending

            def lower(found: Found) -> None:
                if found.block.duration <= ceiling:  # longer ones reach the run's session
                    pending.append(found)

            state.extra = Session(
                core_config(min(rules.threshold, ceiling), strict=strict_here),
                listener=lower, log_blocks=False,
                call_listener=self._hear_call if strict_here else None,
            ).start()
        return error

    def _enter_phase(self, phase: Phase) -> None:
        state = self._current
        if state is not None:
            state.phase = phase
            state.fixtures.clear()
            state.mark()

    def _end_item(self) -> None:
        state = self._current
        if state is None:
            return
        if state.extra is not None:
            extra, state.extra = state.extra, None
            extra.stop()  # its last blocks reach _pending
            self._drain()
        # Otherwise the teardown's judgement has just drained everything.
        self._current = None
        self._results.add_test(state.nodeid, state.seen, state.calls)

    def _judge(self, item: pytest.Item, phases: tuple[Phase, ...], test_failed: bool) -> str | None:
        """Apply the mode to this test's blocks; the failure message if it should fail."""
        self._drain()
        state = self._current
        if state is None or state.rules.allow or not (state.seen or state.calls):
            return None
        counted = state.counted(phases)
        calls = state.counted_calls(phases)
        if not counted and not calls:
            return None
        text = self._render.failure(counted, calls, state.rules.threshold)
        mode = self.settings.mode
        if mode == "report":
            return None
        if mode == "warn":
            self._results.flagged[state.nodeid] = "warned"
            escalated = self._warn(item, counted, state.rules.threshold)
            if escalated is None:
                escalated = self._warn_calls(item, calls)
            if escalated is None or test_failed:
                return None
            text += (
                "\n(LoopwatchWarning is turned into an error by a warnings filter; add "
                "'default::loopwatch.pytest_plugin.LoopwatchWarning' to filterwarnings "
                "to keep --loopwatch-mode=warn non-fatal)"
            )
        if test_failed:
            return None
        self._results.flagged[state.nodeid] = "failed"
        state.reported_in_longrepr.update(phases)
        return text

    def _warn_calls(self, item: pytest.Item, calls: list[SeenCall]) -> str | None:
        """Issue one LoopwatchWarning per blocking call and line, located at that line."""
        for group in group_calls(calls)[:MAX_SHOWN_BLOCKS]:
            site = group[0].call.site
            file, _, line = site.rpartition(":") if site else ("", "", "0")
            try:
                warnings.warn_explicit(
                    self._render.warning_call(item.nodeid, group),
                    LoopwatchWarning,
                    filename=file or str(item.path),
                    lineno=int(line) if line.isdigit() else 0,
                    module="loopwatch",
                )
            except LoopwatchWarning as error:
                return str(error)
        return None

    def _warn(self, item: pytest.Item, counted: list[Seen], threshold: float) -> str | None:
        """Issue one LoopwatchWarning per block, located at the blocking line."""
        for seen in counted[:MAX_SHOWN_BLOCKS]:
            block = seen.block
            frame = block.user_frame
            message = self._render.warning(item.nodeid, seen, threshold)
            try:
                warnings.warn_explicit(
                    message,
                    LoopwatchWarning,
                    filename=frame.file if frame else str(item.path),
                    lineno=frame.line if frame else 0,
                    module="loopwatch",
                )
            except LoopwatchWarning as error:
                return str(error)
        return None

    # -- hooks around each test ---------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        bad_marker = self._guard(self._begin_item, item)
        result = yield
        # After pytest's own setup, so that its teardown finds everything in place.
        if bad_marker:
            pytest.fail(bad_marker, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        self._guard(self._enter_phase, "call")
        try:
            result = yield
        except BaseException:
            self._guard(self._judge, item, ("setup", "call"), True)
            raise
        failure = self._guard(self._judge, item, ("setup", "call"), False)
        if failure:
            pytest.fail(failure, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        self._guard(self._enter_phase, "teardown")
        try:
            result = yield
        except BaseException:
            self._guard(self._judge, item, ("teardown",), True)
            raise
        failure = self._guard(self._judge, item, ("teardown",), False)
        if failure:
            pytest.fail(failure, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        self._guard(self._attach_section, item, report)
        if call.when == "teardown":
            self._guard(self._end_item)
        return report

    def _attach_section(self, item: pytest.Item, report: pytest.TestReport) -> None:
        state = self._current
        if state is None or state.nodeid != item.nodeid:
            return
        if report.when == "setup" and not report.passed:
            self._drain()  # no call phase follows to do it
        if not state.seen and not state.calls:
            return
        phases: tuple[str, ...] = (report.when,) if report.when else ()
        if report.when == "call" or (report.when == "setup" and not report.passed):
            phases = ("setup", "call")
        fresh = [p for p in phases if p not in state.sectioned]
        state.sectioned.update(fresh)
        if any(p in state.reported_in_longrepr for p in fresh):
            return
        seen = [s for s in state.seen if s.phase in fresh]
        calls = [c for c in state.calls if c.phase in fresh]
        parts = [self._render.blocks(seen, state.rules)] if seen else []
        if calls:
            parts.append("blocking calls (strict mode):\n" + self._render.calls(calls))
        if parts:
            report.sections.append(("loopwatch", "\n".join(parts)))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        pushed = self._guard(self._fixture_enter, fixturedef.argname)
        try:
            return (yield)
        finally:
            if pushed:
                self._guard(self._fixture_exit)

    def _fixture_enter(self, name: str) -> bool:
        state = self._current
        if state is None:
            return False
        state.fixtures.append(name)
        state.mark()
        return True

    def _fixture_exit(self) -> None:
        state = self._current
        if state is None or not state.fixtures:
            return
        state.fixtures.pop()
        state.mark()

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        # pytest has no hook before a fixture's finalizers run, only this one after:
        # what ended since the previous boundary was the fixture's teardown.
        self._guard(self._fixture_finalized, fixturedef.argname)

    def _fixture_finalized(self, name: str) -> None:
        if self._current is not None:
            self._current.finalized(name)

    # -- the loopwatch fixture ------------------------------------------------------

    def blocks_of(self, nodeid: str) -> list[Block]:
        """The blocks of the running test so far (setup and call)."""
        self._drain(in_loop=True)
        state = self._current
        if state is None or state.nodeid != nodeid:
            return []
        return [s.block for s in state.seen if s.block.duration > state.rules.threshold]

    def calls_of(self, nodeid: str) -> list[BlockingCall]:
        """Strict mode: the blocking calls of the running test so far (setup and call)."""
        self._drain(in_loop=True)
        state = self._current
        if state is None or state.nodeid != nodeid:
            return []
        return [s.call for s in state.calls]

    # -- output -------------------------------------------------------------------

    def _write_baseline(self, path: Path) -> None:
        try:
            write_baseline(path, self._results.found)
            self._results.baseline_written = str(self.settings.baseline)
        except OSError as error:
            self._results.errors.append(f"could not write the baseline to {path}: {error}")

    def _write_json(self) -> None:
        path = Path(self.config.invocation_params.dir, str(self.settings.json_path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self._results.export(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            self._results.errors.append(f"could not write the JSON report to {path}: {error}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._guard(self._summary, terminalreporter)

    def _summary(self, tr: Any) -> None:
        if self.config.option.collectonly:
            return
        errors = self._results.errors
        if not self._finished:
            for message in errors:
                tr.write_line(f"loopwatch: {message}", yellow=True)
            return
        self._render.summary(tr, self._results)
        if self.settings.json_path and not any("JSON" in e for e in errors):
            tr.write_line(f"loopwatch: JSON report written to {self.settings.json_path}")


# -- the fixture ----------------------------------------------------------------------


class LoopwatchBlocks:
    """What the ``loopwatch`` fixture gives a test: the blocks it has caused so far.

    A block is known once the loop iteration that blocked has ended, so in an
    ``async def`` test let the loop turn (``await asyncio.sleep(0)``) after
    the blocking call before looking.
    """

    __test__ = False  # not a test class, whatever its name

    def __init__(
        self,
        threshold: float,
        read: Callable[[], list[Block]],
        read_calls: Callable[[], list[BlockingCall]] = list,
    ) -> None:
        self.threshold = threshold
        self._read = read
        self._read_calls = read_calls

    @property
    def blocks(self) -> list[Block]:
        """Blocks longer than the test's threshold, in setup and the test so far, oldest first."""
        return self._read()

    @property
    def calls(self) -> list[BlockingCall]:
        """In strict mode, the blocking calls made on a loop's thread so far, oldest first."""
        return self._read_calls()

    def __len__(self) -> int:
        return len(self.blocks)

    def __repr__(self) -> str:
        return f"<loopwatch LoopwatchBlocks threshold={self.threshold} blocks={len(self.blocks)}>"


@pytest.fixture
def loopwatch(request: pytest.FixtureRequest) -> Generator[LoopwatchBlocks, None, None]:
    """The event-loop blocks of the current test (see ``LoopwatchBlocks``).

    With ``--loopwatch`` these are the blocks the plugin attributes to the test;
    without it, a watch session runs for the test's duration. Use
    ``@pytest.mark.loopwatch(allow=True)`` on a test that blocks on purpose, and
    ``strict=True`` to see its blocking calls in ``.calls``.
    """
    config = request.config
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    nodeid = request.node.nodeid
    if isinstance(plugin, LoopwatchPlugin) and plugin._session is not None:
        state = plugin._current
        threshold = state.rules.threshold if state is not None else plugin.settings.threshold
        yield LoopwatchBlocks(
            threshold, lambda: plugin.blocks_of(nodeid), lambda: plugin.calls_of(nodeid)
        )
        return
    problem = config.stash.get(_settings_error_key, None)
    if problem:
        pytest.fail(problem, pytrace=False)
    settings = config.stash.get(_settings_key, None) or Settings()
    try:
        rules = rules_for(request.node, settings.threshold, settings.strict, settings.count_gc)
    except ConfigError as error:
        pytest.fail(str(error), pytrace=False)
    from loopwatch.session import Session

    session = Session(
        core_config(rules.threshold, max_blocks=1000, strict=rules.strict), log_blocks=False
    )
    session.start()
    try:
        yield LoopwatchBlocks(
            rules.threshold, lambda: list(session.blocks), lambda: list(session.report().calls)
        )
    finally:
        session.stop()

