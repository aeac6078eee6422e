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

Settings are resolved once, by precedence command line > environment >
ini file > default, into an immutable :class:`Settings`; the
``@pytest.mark.loopwatch(threshold=..., allow=...)`` marker applies on top,
per test.
"""

from __future__ import annotations

import bisect
import inspect
import json
import linecache
import math
import os
import sysconfig
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import pytest

from loopwatch._format import milliseconds
from loopwatch.config import ConfigError, parse_bool, parse_seconds

if TYPE_CHECKING:
    from loopwatch.config import Config
    from loopwatch.model import Block
    from loopwatch.session import Session

PytestMode = Literal["fail", "warn", "report"]
MODES: tuple[str, ...] = get_args(PytestMode)
DEFAULT_THRESHOLD = 0.1

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

MARKER_DOC = (
    "loopwatch(threshold=None, allow=False): loopwatch settings for this test: "
    "threshold overrides --loopwatch-threshold (seconds; lower or higher); "
    "allow=True records the test's blocks without failing or warning."
)

#: How many blocks the plugin keeps in detail for one process; the rest are counted.
MAX_KEPT_BLOCKS = 10_000
#: Blocks shown in one failure message, and sites in the terminal summary.
MAX_SHOWN_BLOCKS = 5
MAX_SHOWN_SITES = 10
#: Stack frames shown for one block (innermost ones).
MAX_SHOWN_FRAMES = 12

T = TypeVar("T")


class LoopwatchWarning(UserWarning):
    """Issued in warn mode for a test that blocked the event loop for longer than the threshold.

    Filter it like any warning: in a project that turns warnings into errors,
    ``filterwarnings = default::loopwatch.pytest_plugin.LoopwatchWarning`` keeps
    warn mode non-fatal.
    """


# -- settings ----------------------------------------------------------------------


class SettingsError(ConfigError):
    """Raised when a loopwatch pytest setting has a value it cannot use."""


@dataclass(frozen=True)
class Settings:
    """The plugin's settings for one run, resolved once (see :func:`resolve_settings`)."""

    enabled: bool = False
    threshold: float = DEFAULT_THRESHOLD
    mode: PytestMode = "fail"
    json_path: str | None = None
    sources: tuple[tuple[str, str], ...] = ()
    """(setting, where its value came from), for the report header."""

    def source(self, name: str) -> str:
        return dict(self.sources).get(name, "default")


# name -> (command line option, environment variable, ini key)
_NAMES: dict[str, tuple[str, str, str]] = {
    "enabled": ("--loopwatch", "LOOPWATCH_PYTEST", "loopwatch"),
    # The same variable as the core's threshold: it means the same thing everywhere.
    "threshold": ("--loopwatch-threshold", "LOOPWATCH_THRESHOLD", "loopwatch_threshold"),
    # Not LOOPWATCH_MODE: the core's mode (report|log|raise) is a different setting.
    "mode": ("--loopwatch-mode", "LOOPWATCH_PYTEST_MODE", "loopwatch_mode"),
    "json_path": ("--loopwatch-json", "LOOPWATCH_PYTEST_JSON", "loopwatch_json"),
}

def _parse_threshold(raw: Any, source: str) -> float:
    return parse_seconds(raw, "threshold", source, SettingsError)


def _parse(name: str, raw: Any, source: str) -> Any:
    if name == "enabled":
        return parse_bool(raw, "enabled", source, SettingsError)
    if name == "threshold":
        return _parse_threshold(raw, source)
    if name == "mode":
        mode = str(raw).strip().lower()
        if mode not in MODES:
            raise SettingsError("mode", raw, source, f"expected one of {', '.join(MODES)}")
        return mode
    path = str(raw).strip()
    return path or None


def resolve_settings(
    *,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings by precedence: command line > environment > ini > default.

    ``cli`` and ``ini`` are keyed by setting name (``enabled``, ``threshold``,
    ``mode``, ``json_path``); ``None`` or ``""`` means not set. ``env`` is the
    process environment. Raises :class:`~loopwatch.config.ConfigError` naming
    the setting, the value and where it came from.

    >>> resolve_settings(cli={"threshold": "0.2"}, env={"LOOPWATCH_THRESHOLD": "0.3"}).threshold
    0.2
    """
    cli = cli or {}
    env = os.environ if env is None else env
    ini = ini or {}
    values: dict[str, Any] = {}
    sources: list[tuple[str, str]] = []
    for name, (option, variable, key) in _NAMES.items():
        if cli.get(name) is not None:
            raw, source = cli[name], f"command line option {option}"
        elif env.get(variable, "") != "":
            raw, source = env[variable], f"environment variable {variable}"
        elif ini.get(name) not in (None, ""):
            raw, source = ini[name], f"ini option {key}"
        else:
            continue
        values[name] = _parse(name, raw, source)
        sources.append((name, source))
    return Settings(**values, sources=tuple(sources))


def _threshold_option(text: str) -> float:
    """argparse type for --loopwatch-threshold: a bad value is a usage error naming the option."""
    import argparse

    try:
        return _parse_threshold(text, "--loopwatch-threshold")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a number of seconds > 0, e.g. 0.1"
        )


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
        type=_threshold_option,
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
    # Strings, parsed here, so that a bad value is reported with its source.
    parser.addini("loopwatch", HELP_ENABLE + " (true/false)", default="")
    parser.addini("loopwatch_threshold", HELP_THRESHOLD, default="")
    parser.addini("loopwatch_mode", HELP_MODE, default="")
    parser.addini("loopwatch_json", HELP_JSON, default="")


def _settings_from(config: pytest.Config) -> Settings:
    cli = {
        "enabled": config.getoption("loopwatch"),
        "threshold": config.getoption("loopwatch_threshold"),
        "mode": config.getoption("loopwatch_mode"),
        "json_path": config.getoption("loopwatch_json"),
    }
    ini = {name: config.getini(key) for name, (_, _, key) in _NAMES.items()}
    return resolve_settings(cli=cli, env=os.environ, ini=ini)


_settings_key = pytest.StashKey[Settings]()
_settings_error_key = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    try:
        settings = _settings_from(config)
    except ConfigError as error:
        enabled = config.getoption("loopwatch")
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
        f"threshold={_ms(settings.threshold)} ({settings.source('threshold')})",
        f"mode={settings.mode} ({settings.source('mode')})",
    ]
    if settings.json_path:
        parts.append(f"json={settings.json_path}")
    return "loopwatch: " + ", ".join(parts)


# -- the marker ------------------------------------------------------------------


@dataclass(frozen=True)
class _TestRules:
    threshold: float
    allow: bool


def _marker_signature(threshold: float | None = None, allow: bool = False) -> None:
    """The marker's signature: @pytest.mark.loopwatch(threshold=None, allow=False)."""


def _rules_for(item: pytest.Item, default: float) -> _TestRules:
    """The marker's settings for this test; raises SettingsError for a bad marker."""
    marker = item.get_closest_marker("loopwatch")
    if marker is None:
        return _TestRules(default, False)
    source = f"@pytest.mark.loopwatch on {item.nodeid}"
    try:
        bound = inspect.signature(_marker_signature).bind(*marker.args, **marker.kwargs)
    except TypeError as error:
        raise SettingsError(
            "marker", f"{marker.args or ''}{marker.kwargs or ''}", source,
            f"{error}; expected loopwatch(threshold=None, allow=False)",
        )
    threshold = bound.arguments.get("threshold")
    allow = bound.arguments.get("allow", False)
    if not isinstance(allow, bool):
        raise SettingsError("allow", allow, source, "expected True or False")
    if threshold is None:
        return _TestRules(default, allow)
    if isinstance(threshold, str):
        raise SettingsError("threshold", threshold, source, "expected a number of seconds > 0")
    return _TestRules(_parse_threshold(threshold, source), allow)


# -- what the plugin records ----------------------------------------------------------

Phase = Literal["setup", "call", "teardown", "outside"]


@dataclass(frozen=True)
class _Seen:
    """A block and where in the run it happened."""

    block: Block
    phase: Phase
    fixture: str | None = None
    fixture_action: str | None = None

    @property
    def where(self) -> str:
        if self.fixture:
            return f"{self.fixture_action or self.phase} of fixture {self.fixture!r}"
        return {
            "setup": "test setup",
            "call": "the test",
            "teardown": "test teardown",
            "outside": "no test",
        }[self.phase]

    def to_dict(self) -> dict[str, Any]:
        data = self.block.to_dict()
        data["phase"] = self.phase
        data["fixture"] = self.fixture
        data["fixture_action"] = self.fixture_action
        return data


_Label = tuple[Phase, "str | None", "str | None"]
"""(test phase, fixture name, fixture action) of one window."""


@dataclass
class _ItemState:
    """The test being run: its rules, its windows and the blocks seen so far.

    A window opens at each boundary (a phase starting, a fixture's setup
    starting or ending, a fixture finalized) and runs to the next one; its
    start is a ``time.monotonic()`` reading, the loop clock the core stamps
    blocks with. Marking a boundary costs a clock read; the watchdog is only
    flushed when the blocks are needed.
    """

    nodeid: str
    rules: _TestRules
    phase: Phase = "setup"
    fixtures: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    labels: list[_Label] = field(default_factory=list)
    seen: list[_Seen] = field(default_factory=list)
    extra: Session | None = None
    reported_in_longrepr: set[str] = field(default_factory=set)
    sectioned: set[str] = field(default_factory=set)

    def mark(self) -> None:
        """Open a window labelled with the current phase and fixture, from now."""
        fixture = self.fixtures[-1] if self.fixtures else None
        self.starts.append(time.monotonic())
        self.labels.append((self.phase, fixture, "setup" if fixture else None))

    def label_at(self, end: float) -> _Label | None:
        """The label of the window in which a block that ended at ``end`` ended."""
        index = bisect.bisect_right(self.starts, end) - 1
        return self.labels[index] if index >= 0 else None

    def counted(self, phases: Iterable[str]) -> list[_Seen]:
        wanted = set(phases)
        limit = self.rules.threshold
        return [s for s in self.seen if s.phase in wanted and s.block.duration > limit]


# -- the active plugin ------------------------------------------------------------


class LoopwatchPlugin:
    """The plugin object registered when loopwatch is switched on for a run."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.rootpath = Path(str(config.rootpath))
        self._pending: deque[Block] = deque()
        self._session: Session | None = None
        self._current: _ItemState | None = None
        self._tests: dict[str, list[_Seen]] = {}
        self._outside: list[_Seen] = []
        self._flagged: dict[str, str] = {}
        self._kept = 0
        self._dropped = 0
        self._tests_run = 0
        self._watched = False
        self._flushed_at = -math.inf
        self._recent_starts: dict[float, None] = {}
        self._errors: list[str] = []
        self._events: list[str] = []
        self._remote: list[dict[str, Any]] = []
        self._final: dict[str, Any] | None = None
        self._worker = hasattr(config, "workerinput")
        # Built now so that a bad LOOPWATCH_* value for the core stops the run at start-up.
        # The plugin keeps its own copy of every block (on_block, called inline in the
        # watchdog thread: deque appends are atomic and quick), so the session keeps just one.
        self._core_config = _core_config(settings.threshold, self._pending.append)

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
                self._errors.append(message)
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

        self._session = Session(self._core_config, inline_on_block=True, log_blocks=False).start()
        self._watched = True

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._guard(self._finish_run)

    def _finish_run(self) -> None:
        if self._session is not None:
            self._drain()
            self._session.stop()
            self._drain()  # stopping flushes the last blocks
            self._events.extend(self._session.report().events)
            self._session = None
        data = self._export()
        if self._worker:
            self.config.workeroutput["loopwatch"] = data  # type: ignore[attr-defined]
            return
        for remote in self._remote:
            _merge(data, remote)
        self._final = data
        if self.settings.json_path:
            self._write_json(data)

    def pytest_unconfigure(self) -> None:
        # A run interrupted before sessionfinish must still leave nothing patched behind.
        if self._session is not None:
            self._guard(self._session.stop)
            self._session = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        data = getattr(node, "workeroutput", {}).get("loopwatch")
        if isinstance(data, dict):
            self._remote.append(data)

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
        if not self._pending:
            return
        for block in self._unique(self._pending):
            label = state.label_at(_ended(block)) if state is not None else None
            if state is None or label is None:
                self._keep(self._outside, _Seen(block, "outside"))
            else:
                self._keep(state.seen, _Seen(block, *label))

    def _unique(self, pending: deque[Block]) -> list[Block]:
        """Take the pending blocks, without second reports of one loop iteration.

        One thread runs one loop iteration at a time, and an iteration's start
        time is read from the loop, so two blocks with the same start are the
        same iteration. The core can report an iteration again under another
        loop of the same thread: a stopped module- or session-scoped loop
        adopts the running loop's iteration and reports it, stretched, when it
        next runs. Keep the report that names a task.
        """
        taken: list[Block] = []
        while pending:
            taken.append(pending.popleft())
        best: dict[float, Block] = {}
        for block in taken:
            if block.started in self._recent_starts:
                continue
            known = best.get(block.started)
            if known is None or (known.task is None and block.task is not None):
                best[block.started] = block
        for start in best:
            self._recent_starts[start] = None
        while len(self._recent_starts) > 256:
            del self._recent_starts[next(iter(self._recent_starts))]
        return list(best.values())

    def _keep(self, target: list[_Seen], seen: _Seen) -> None:
        if self._kept >= MAX_KEPT_BLOCKS:
            self._dropped += 1
            return
        self._kept += 1
        target.append(seen)

    # -- per test -------------------------------------------------------------------

    def _begin_item(self, item: pytest.Item) -> str | None:
        error = None
        try:
            rules = _rules_for(item, self.settings.threshold)
        except ConfigError as bad:
            rules, error = _TestRules(self.settings.threshold, True), str(bad)
        state = self._current = _ItemState(item.nodeid, rules)
        state.mark()
        if rules.threshold < self.settings.threshold and self._session is not None:
            # The run's session only hears of blocks over the run's threshold; a
            # short extra session lowers the watchdog's threshold for this test.
            from loopwatch.session import Session

            ceiling = self.settings.threshold
            pending = self._pending

            def lower(block: Block) -> None:
                if block.duration <= ceiling:  # longer ones reach the run's session
                    pending.append(block)

            state.extra = Session(
                _core_config(rules.threshold, lower), inline_on_block=True, log_blocks=False
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
        self._tests_run += 1
        if state.seen:
            self._tests.setdefault(state.nodeid, []).extend(state.seen)

    def _judge(self, item: pytest.Item, phases: tuple[Phase, ...], test_failed: bool) -> str | None:
        """Apply the mode to this test's blocks; the failure message if it should fail."""
        self._drain()
        state = self._current
        if state is None or state.rules.allow or not state.seen:
            return None
        counted = state.counted(phases)
        if not counted:
            return None
        text = self._render_failure(item.nodeid, counted, state.rules.threshold)
        mode = self.settings.mode
        if mode == "report":
            return None
        if mode == "warn":
            self._flagged[state.nodeid] = "warned"
            escalated = self._warn(item, counted, state.rules.threshold)
            if escalated is None or test_failed:
                return None
            text += (
                "\n(LoopwatchWarning is turned into an error by a warnings filter; add "
                "'default::loopwatch.pytest_plugin.LoopwatchWarning' to filterwarnings "
                "to keep --loopwatch-mode=warn non-fatal)"
            )
        if test_failed:
            return None
        self._flagged[state.nodeid] = "failed"
        state.reported_in_longrepr.update(phases)
        return text

    def _warn(self, item: pytest.Item, counted: list[_Seen], threshold: float) -> str | None:
        """Issue one LoopwatchWarning per block, located at the blocking line."""
        for seen in counted[:MAX_SHOWN_BLOCKS]:
            block = seen.block
            frame = block.user_frame
            message = (
                f"loopwatch: {item.nodeid} blocked the event loop for {_ms(block.duration)} "
                f"(threshold {_ms(threshold)}) in {seen.where}"
                + (f" at {self._short(block.site)} in {block.function}" if block.site else "")
            )
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
        if not state.seen:
            return
        phases: tuple[str, ...] = (report.when,) if report.when else ()
        if report.when == "call" or (report.when == "setup" and not report.passed):
            phases = ("setup", "call")
        fresh = [p for p in phases if p not in state.sectioned]
        state.sectioned.update(fresh)
        if any(p in state.reported_in_longrepr for p in fresh):
            return
        seen = [s for s in state.seen if s.phase in fresh]
        if seen:
            text = self._render_blocks(seen, state.rules)
            report.sections.append(("loopwatch", text))

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
        state = self._current
        if state is None or not state.labels:
            return
        # The window since the previous boundary was this fixture's finalizers.
        state.labels[-1] = (state.phase, name, "teardown")
        state.mark()

    # -- the loopwatch fixture ------------------------------------------------------

    def blocks_of(self, nodeid: str) -> list[Block]:
        """The blocks of the running test so far (setup and call)."""
        self._drain(in_loop=True)
        state = self._current
        if state is None or state.nodeid != nodeid:
            return []
        return [s.block for s in state.seen if s.block.duration > state.rules.threshold]

    # -- output -------------------------------------------------------------------

    def _export(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "threshold": self.settings.threshold,
            "mode": self.settings.mode,
            "tests": {
                nodeid: [s.to_dict() for s in seen] for nodeid, seen in self._tests.items()
            },
            "outside_tests": [s.to_dict() for s in self._outside],
            "flagged": dict(self._flagged),
            "tests_run": self._tests_run,
            "watched": self._watched,
            "dropped_blocks": self._dropped,
            "events": list(dict.fromkeys(self._events)),
            "errors": list(self._errors),
        }

    def _write_json(self, data: dict[str, Any]) -> None:
        path = Path(self.config.invocation_params.dir, str(self.settings.json_path))
        out = dict(data, sites=_sites(data))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            self._errors.append(f"could not write the JSON report to {path}: {error}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._guard(self._summary, terminalreporter)

    def _summary(self, tr: Any) -> None:
        if self.config.option.collectonly:
            return
        data = self._final
        if data is None:
            if self._errors:
                for message in self._errors:
                    tr.write_line(f"loopwatch: {message}", yellow=True)
            return
        sites = _sites(data)
        blocks = [b for seen in data["tests"].values() for b in seen] + data["outside_tests"]
        threshold = _ms(data["threshold"])
        if sites:
            tr.write_sep("=", "loopwatch: worst blocking sites", yellow=True)
            tr.write_line(f"{'count':>6} {'total':>10} {'max':>10}  site")
            for site in sites[:MAX_SHOWN_SITES]:
                tests = site["tests"]
                who = (tests[0] + (f" (+{len(tests) - 1} more)" if len(tests) > 1 else "")
                       if tests else "outside tests")
                tr.write_line(
                    f"{site['count']:>6} {_ms(site['total']):>10} {_ms(site['max']):>10}  "
                    f"{self._short(site['site'])} in {site['function'] or '?'} "
                    f"({site['kind']}) - {who}"
                )
            if len(sites) > MAX_SHOWN_SITES:
                tr.write_line(f"  ... and {len(sites) - MAX_SHOWN_SITES} more sites")
        tested = sum(1 for seen in data["tests"].values() if seen)
        if not data["watched"]:
            tr.write_line("loopwatch: nothing was watched", yellow=True)
        elif blocks:
            failed = sum(1 for v in data["flagged"].values() if v == "failed")
            warned = sum(1 for v in data["flagged"].values() if v == "warned")
            verdict = (f"; {failed} test(s) failed" if failed else "") + (
                f"; {warned} test(s) warned" if warned else ""
            )
            tr.write_line(
                f"loopwatch: {len(blocks) + data['dropped_blocks']} block(s) over {threshold} "
                f"in {tested} of {data['tests_run']} test(s), "
                f"{_ms(sum(b['duration'] for b in blocks))} blocked in total{verdict} "
                f"(mode {data['mode']})",
                bold=True,
            )
        else:
            tr.write_line(
                f"loopwatch: no blocks over {threshold} in {data['tests_run']} test(s)"
            )
        for event in data["events"]:
            tr.write_line(f"loopwatch: note: {event}")
        for message in list(data["errors"]) + [e for e in self._errors if e not in data["errors"]]:
            tr.write_line(f"loopwatch: {message}", yellow=True)
        if self.settings.json_path and not any("JSON" in e for e in self._errors):
            tr.write_line(f"loopwatch: JSON report written to {self.settings.json_path}")

    # -- rendering ----------------------------------------------------------------

    def _short(self, path: str | None) -> str:
        """A path relative to the rootdir when it is under it, else shortened."""
        if not path:
            return "<unknown>"
        location, sep, line = path.rpartition(":")
        if not sep or not line.isdigit():
            location, sep, line = path, "", ""
        try:
            relative = os.path.relpath(location, self.rootpath)
        except ValueError:
            relative = location
        if relative.startswith(".."):
            relative = location
            marker = "site-packages" + os.sep
            stdlib = sysconfig.get_paths().get("stdlib", "") + os.sep
            if marker in location:
                relative = "..." + os.sep + location.split(marker, 1)[1]
            elif stdlib != os.sep and location.startswith(stdlib):
                relative = "<stdlib>" + os.sep + location[len(stdlib):]
        return relative + sep + line

    def _render_failure(self, nodeid: str, counted: list[_Seen], threshold: float) -> str:
        # The first line is what `-r` short summaries show: duration and line first.
        worst = max(counted, key=lambda s: s.block.duration)
        at = f" at {self._short(worst.block.site)}" if worst.block.site else ""
        if len(counted) == 1:
            head = (
                f"loopwatch: blocked the event loop for {_ms(worst.block.duration)}{at} "
                f"(threshold {_ms(threshold)})"
            )
        else:
            head = (
                f"loopwatch: blocked the event loop {len(counted)} times, longest "
                f"{_ms(worst.block.duration)}{at} (threshold {_ms(threshold)})"
            )
        return head + "\n" + self._render_blocks(counted, None)

    def _render_blocks(self, seen: list[_Seen], rules: _TestRules | None) -> str:
        lines: list[str] = []
        if rules is not None and rules.allow:
            lines.append("(allowed by @pytest.mark.loopwatch(allow=True))")
        for item in seen[:MAX_SHOWN_BLOCKS]:
            lines.extend(self._render_block(item))
        if len(seen) > MAX_SHOWN_BLOCKS:
            lines.append(f"... and {len(seen) - MAX_SHOWN_BLOCKS} more block(s)")
        return "\n".join(lines)

    def _render_block(self, seen: _Seen) -> list[str]:
        block = seen.block
        where = self._short(block.site) if block.site else "<no stack captured>"
        ratio = f", cpu {block.cpu_ratio:.0%}" if block.cpu_ratio is not None else ""
        task = f", task {block.task}" if block.task else ""
        accuracy = " (uvloop: to within one heartbeat)" if block.resolution == "heartbeat" else ""
        lines = [
            f"{_ms(block.duration)}{accuracy} in {seen.where}: {where} in "
            f"{block.function or '?'} [{block.kind}{ratio}{task}]"
        ]
        frame = block.user_frame
        if frame is not None:
            source = linecache.getline(frame.file, frame.line).strip()
            if source:
                lines.append(f"    {source}")
        frames = _loop_inner_frames(block)
        if frames:
            lines.append("  stack (innermost last):")
            if len(frames) > MAX_SHOWN_FRAMES:
                lines.append(f"    ... {len(frames) - MAX_SHOWN_FRAMES} outer frame(s)")
                frames = frames[-MAX_SHOWN_FRAMES:]
            for f in frames:
                mark = "  <-" if frame is not None and f == frame else ""
                lines.append(f"    {self._short(f.location)} in {f.function}{mark}")
        if block.advice:
            lines.append(f"  advice: {block.advice}")
        return lines


# -- helpers ------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return milliseconds(seconds)


def _ended(block: Block) -> float:
    """When the block's iteration ended, on the loop clock (``time.monotonic()``)."""
    from loopwatch.watchdog import WALL_OFFSET

    return block.started - WALL_OFFSET + block.duration


def _core_config(
    threshold: float, on_block: Callable[[Block], Any], *, max_blocks: int = 1
) -> Config:
    """The core Config for a plugin session; other LOOPWATCH_* core settings still apply."""
    from loopwatch.config import Config, ConfigError

    # Keys the plugin decides itself, or that mean something else for the core.
    skip = {"LOOPWATCH_THRESHOLD", "LOOPWATCH_MODE", "LOOPWATCH_ON_BLOCK", "LOOPWATCH_MAX_BLOCKS"}
    env = {k: v for k, v in os.environ.items() if k.startswith("LOOPWATCH_") and k not in skip}
    options: dict[str, Any] = {}
    if "LOOPWATCH_SAMPLE_INTERVAL" not in env:
        options["sample_interval"] = min(0.002, threshold / 4)
    try:
        return Config.resolve(
            env=env,
            threshold=threshold,
            mode="report",
            max_blocks=max_blocks,
            on_block=on_block,
            **options,
        )
    except ConfigError as error:
        raise pytest.UsageError(str(error))


_LOOP_FUNCTIONS = frozenset({"_run", "_run_once", "run_forever", "run_until_complete"})


def _loop_inner_frames(block: Block) -> list[Any]:
    """The block's stack from where the event loop called in: the frames outside are noise."""
    frames = list(block.frames)
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        path = frame.file.replace("\\", "/")
        if frame.function in _LOOP_FUNCTIONS and (
            "/asyncio/" in path or "/loopwatch/" in path or "/uvloop/" in path
        ):
            return frames[index + 1 :]
    return frames


def _sites(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-site aggregates over every block of the run, with the tests that blocked there."""
    from loopwatch.model import Block, aggregate_sites

    blocks: list[Block] = []
    tests_at: dict[str, list[str]] = {}
    for nodeid, seen in data["tests"].items():
        for item in seen:
            blocks.append(Block.from_dict(item))
            tests = tests_at.setdefault(item.get("site") or "<unknown>", [])
            if nodeid not in tests:
                tests.append(nodeid)
    blocks.extend(Block.from_dict(item) for item in data["outside_tests"])
    out = []
    for site in aggregate_sites(blocks):
        entry = site.to_dict()
        entry["tests"] = tests_at.get(site.site, [])
        out.append(entry)
    return out


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    """Merge an xdist worker's results into the controller's."""
    for nodeid, seen in other.get("tests", {}).items():
        into["tests"].setdefault(nodeid, []).extend(seen)
    into["outside_tests"].extend(other.get("outside_tests", ()))
    into["flagged"].update(other.get("flagged", {}))
    into["tests_run"] += other.get("tests_run", 0)
    into["watched"] = into["watched"] or other.get("watched", False)
    into["dropped_blocks"] += other.get("dropped_blocks", 0)
    for key in ("events", "errors"):
        for message in other.get(key, ()):
            if message not in into[key]:
                into[key].append(message)


# -- the fixture ----------------------------------------------------------------------


class LoopwatchBlocks:
    """What the ``loopwatch`` fixture gives a test: the blocks it has caused so far.

    A block is known once the loop iteration that blocked has ended, so in an
    ``async def`` test let the loop turn (``await asyncio.sleep(0)``) after
    the blocking call before looking.
    """

    __test__ = False  # not a test class, whatever its name

    def __init__(self, threshold: float, read: Callable[[], list[Block]]) -> None:
        self.threshold = threshold
        self._read = read

    @property
    def blocks(self) -> list[Block]:
        """Blocks longer than the test's threshold, in setup and the test so far, oldest first."""
        return self._read()

    def __len__(self) -> int:
        return len(self.blocks)

    def __repr__(self) -> str:
        return f"<loopwatch LoopwatchBlocks threshold={self.threshold} blocks={len(self.blocks)}>"


@pytest.fixture
def loopwatch(request: pytest.FixtureRequest) -> Generator[LoopwatchBlocks, None, None]:
    """The event-loop blocks of the current test (see ``LoopwatchBlocks``).

    With ``--loopwatch`` these are the blocks the plugin attributes to the test;
    without it, a watch session runs for the test's duration. Use
    ``@pytest.mark.loopwatch(allow=True)`` on a test that blocks on purpose.
    """
    config = request.config
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    nodeid = request.node.nodeid
    if isinstance(plugin, LoopwatchPlugin) and plugin._session is not None:
        state = plugin._current
        threshold = state.rules.threshold if state is not None else plugin.settings.threshold
        yield LoopwatchBlocks(threshold, lambda: plugin.blocks_of(nodeid))
        return
    problem = config.stash.get(_settings_error_key, None)
    if problem:
        pytest.fail(problem, pytrace=False)
    settings = config.stash.get(_settings_key, None) or Settings()
    try:
        rules = _rules_for(request.node, settings.threshold)
    except ConfigError as error:
        pytest.fail(str(error), pytrace=False)
    from loopwatch.session import Session

    session = Session(
        _core_config(rules.threshold, lambda block: None, max_blocks=1000), log_blocks=False
    )
    session.start()
    try:
        yield LoopwatchBlocks(rules.threshold, lambda: list(session.blocks))
    finally:
        session.stop()

