"""Shared fixtures: every test must leave no loopwatch state behind."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from loopwatch._core.strict import STRICT
from loopwatch.watchdog import WATCHDOG

_RUN_FOREVER = asyncio.base_events.BaseEventLoop.__dict__["run_forever"]
_ARM = faulthandler.dump_traceback_later


def _warm_up_uvloop() -> None:
    # uvloop's first loop opens process-wide descriptors that live on: open
    # them before any test counts descriptors.
    try:
        import uvloop
    except ImportError:
        return

    async def nothing() -> None:
        pass

    uvloop.run(nothing())


_warm_up_uvloop()


#: the signals a session may take for report_signal (POSIX)
_SIGNALS = [getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name)]


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: skip the fd check
        return -1


@pytest.fixture(autouse=True)
def no_loopwatch_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: no session, no watchdog thread, no patch, no extra file descriptor."""
    if request.config.getoption("loopwatch", default=False):
        # this suite run under `pytest --loopwatch`: the plugin's session is meant to be there
        yield
        return
    fds = _open_fds()
    handlers = [signal.getsignal(s) for s in _SIGNALS]
    yield
    assert not WATCHDOG.active(), "a loopwatch session was left running"
    assert [signal.getsignal(s) for s in _SIGNALS] == handlers, "a signal was not given back"
    assert not WATCHDOG._wake_listeners, "a wake listener outlived its session"
    watchdogs = [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]
    assert not watchdogs, "the watchdog thread outlived its sessions"
    sinks = [t for t in threading.enumerate() if t.name == "loopwatch-sinks"]
    assert not sinks, "the sinks thread outlived its sessions"
    assert asyncio.base_events.BaseEventLoop.__dict__["run_forever"] is _RUN_FOREVER
    assert faulthandler.dump_traceback_later is _ARM
    assert not STRICT.wrapped, "strict mode's wrappers outlived its sessions"
    if fds >= 0:
        assert _open_fds() <= fds, "loopwatch leaked a file descriptor"


@pytest.fixture
def clean_loopwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated suites (pytester) see only the LOOPWATCH_* variables a test sets."""
    for name in list(os.environ):
        if name.startswith("LOOPWATCH"):
            monkeypatch.delenv(name)
    # wide enough that short test summary lines are not cut
    monkeypatch.setenv("COLUMNS", "240")


@pytest.fixture(autouse=True, scope="session")
def every_json_matches_its_schema() -> Iterator[None]:
    """Every report and plugin result serialised in this process is checked against the
    schema shipped in loopwatch/schemas (files written by subprocesses: see schemas.read)."""
    import schemas

    from loopwatch._pytest.results import Results
    from loopwatch.model import Report

    to_dict, export = Report.to_dict, Results.export

    def checked_report(self: Report) -> dict[str, Any]:
        data = to_dict(self)
        # Only on the main thread: the concurrency tests' readers serialise reports in
        # a loop from other threads, and a check there (14 ms against to_dict's 2 ms,
        # all of it holding the GIL) would starve the watchdog and change what those
        # tests measure. The same reports are serialised, and checked, on the main
        # thread at the end of those tests.
        if threading.current_thread() is threading.main_thread():
            schemas.check("report", data)
        return data

    def checked_export(self: Results) -> dict[str, Any]:
        return schemas.check("pytest-report", export(self))  # type: ignore[no-any-return]

    Report.to_dict = checked_report  # type: ignore[method-assign]
    Results.export = checked_export  # type: ignore[method-assign]
    yield
    Report.to_dict, Results.export = to_dict, export  # type: ignore[method-assign]
