"""Busy share from the watchdog's looks: time-weighted, overall and per one-second window."""

from __future__ import annotations

import pytest

from loopwatch._core.assemble import Reading
from loopwatch._core.tracker import WINDOW, BusyShare, Callbacks


def test_time_between_looks_counts_as_what_the_look_found() -> None:
    """Three quarters of the time looked busy: the share says so, weighted by time, not looks."""
    share = BusyShare()
    share.account(0.1, 0.1, busy=False)
    share.account(0.4, 0.3, busy=True)
    assert share.overall == pytest.approx(0.75)
    assert share.last is None  # no whole window yet


def test_the_worst_window_and_the_latest_one() -> None:
    """A saturated second between two idle ones is the worst window; the last is idle."""
    share = BusyShare()
    now = 0.0
    for busy in (False, True, False):
        for _ in range(8):  # eighths: exact in binary, so windows close where expected
            now += WINDOW / 8
            share.account(now, WINDOW / 8, busy=busy)
    share.account(now + 0.01, 0.01, busy=False)  # begins the fourth window: the third closes
    assert share.worst == pytest.approx(1.0)
    assert share.last == pytest.approx(0.0)
    assert share.overall == pytest.approx(1 / 3, abs=0.01)


def test_the_window_in_progress_counts_once_it_is_a_quarter_long() -> None:
    """A short run's busy stretch is reported even before a whole window has passed."""
    share = BusyShare()
    share.account(0.1, 0.1, busy=True)
    assert share.worst is None
    share.account(0.3, 0.2, busy=True)
    assert share.worst == pytest.approx(1.0)


def test_nothing_looked_nothing_known() -> None:
    """Before any look, the share is unknown rather than zero."""
    share = BusyShare()
    share.account(1.0, 0.0, busy=True)
    assert (share.overall, share.worst, share.last) == (None, None, None)


def test_busy_share_keeps_a_bounded_history_of_whole_windows() -> None:
    """Each whole window goes to the timeline once, oldest first; at most HISTORY of them."""
    from loopwatch._core.tracker import HISTORY, BusyShare

    share = BusyShare()
    for second in range(HISTORY + 5):
        share.account(second + 0.5, 0.5, busy=second % 2 == 0)
        share.account(second + 1.0, 0.5, busy=False)
    assert len(share.history) == HISTORY
    starts = [start for start, _ in share.history]
    assert starts == sorted(starts) and starts[-1] == HISTORY + 3
    assert {round(s, 2) for _, s in share.history} == {0.0, 0.5}


def test_a_waiting_callback_after_a_computing_one_starts_where_the_cpu_says() -> None:
    """A callback computed (samples at 0 and 10 ms), then one slept (samples from 100 ms on,
    the CPU clock standing still): the sleep began at 60 ms, when the CPU clock stopped,
    not halfway between the samples (55 ms)."""

    callbacks = Callbacks()
    computing, sleeping = 1, 2
    callbacks.sampled(computing, 0.00, None, Reading(0.00, (0.00, None)))
    callbacks.sampled(computing, 0.01, None, Reading(0.01, (0.01, None)))
    for at in (0.10, 0.13, 0.17):
        callbacks.sampled(sleeping, at, Reading(0.01, (0.01, None)), Reading(at, (0.06, None)))
    found = callbacks.blocking(0.0, 0.18)
    assert found is not None
    start, end, before = found
    assert start == pytest.approx(0.06)
    assert end == 0.18
    assert before == Reading(0.10, (0.06, None))  # its own CPU counts from its first sample


def test_callbacks_of_one_kind_hand_over_halfway() -> None:

    callbacks = Callbacks()
    callbacks.sampled(1, 0.00, None, Reading(0.00, (0.00, None)))
    callbacks.sampled(1, 0.01, None, Reading(0.01, (0.01, None)))
    for at in (0.10, 0.13, 0.17):
        callbacks.sampled(2, at, None, Reading(at, (at - 0.01, None)))
    found = callbacks.blocking(0.0, 0.18)
    assert found is not None and found[0] == pytest.approx(0.055)
