"""Block assembly, the watchdog's pure part: made-up samples and clocks in, a Block or Cut out."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import pytest

from loopwatch._core import assemble
from loopwatch._core.assemble import Observed, Reading
from loopwatch.model import Frame
from loopwatch.stacks import UserCode

APP = os.path.abspath("/srv/app/handlers.py")
LIBRARY = os.path.join(os.path.dirname(json.__file__), "decoder.py")  # the stdlib's

handler = Frame(APP, 7, "handler")
helper = Frame(APP, 20, "helper")
decode = Frame(LIBRARY, 353, "raw_decode")


def observed(**fields: object) -> Observed:
    values: dict[str, object] = {
        "start": 10.0, "end": 10.2, "before": Reading(9.95, (1.0, None)), "cpu_end": (1.19, None),
    }
    values.update(fields)
    return Observed(**values)  # type: ignore[arg-type]


def block_of(seen: Observed) -> assemble.Block:
    return assemble.block(seen, block_id=7, loop="Loop#1", user_code=UserCode(), wall_offset=100.0)


# -- cpu_ratio ------------------------------------------------------------------------------


def test_idle_time_before_the_iteration_is_not_counted() -> None:
    """The last look was 50 ms before the start: only start..end is time it could compute."""
    ratio = assemble.cpu_ratio(Reading(9.95, (1.0, None)), (1.2, None), start=10.0, end=10.2)
    assert ratio == pytest.approx(1.0)


def test_a_reading_inside_the_iteration_counts_from_the_reading() -> None:
    """A reference taken after the start: the window begins at the reading."""
    ratio = assemble.cpu_ratio(Reading(10.1, (1.0, None)), (1.05, None), start=10.0, end=10.2)
    assert ratio == pytest.approx(0.5)


def test_run_queue_time_is_left_out_from_the_earliest_reading_that_has_it() -> None:
    """Waiting for a CPU is not time the thread could compute (here half the iteration)."""
    ratio = assemble.cpu_ratio(
        Reading(10.0, (1.0, None)), (1.1, 0.6), start=10.0, end=10.2, queued_from=(1.0, 0.5)
    )
    assert ratio == pytest.approx(1.0)
    assert assemble.cpu_ratio(Reading(10.0, (1.0, None)), (1.1, 0.6), 10.0, 10.2) == (
        pytest.approx(0.5)
    )


def test_no_reading_no_ratio() -> None:
    """Without a CPU reading on either side there is nothing to divide."""
    assert assemble.cpu_ratio(None, (1.0, None), 10.0, 10.2) is None
    assert assemble.cpu_ratio(Reading(10.0, None), (1.0, None), 10.0, 10.2) is None
    assert assemble.cpu_ratio(Reading(10.0, (1.0, None)), None, 10.0, 10.2) is None


# -- gil_held -------------------------------------------------------------------------------


def test_gil_held_by_count_and_by_time() -> None:
    """Most looks late (pure Python), or one long late look (a C call): both mean held."""
    assert assemble.gil_held(observed(wakes=10, late_wakes=9, watch_from=10.0)) == 0.9
    one_long = observed(wakes=2, late_wakes=1, late_time=0.18, watch_from=10.0)
    assert assemble.gil_held(one_long) == pytest.approx(0.9)
    assert assemble.gil_held(observed(wakes=10, late_wakes=0, watch_from=10.0)) == 0.0


def test_gil_held_unknown_when_never_looked_at() -> None:
    """An iteration the watchdog never saw running says nothing about the GIL."""
    assert assemble.gil_held(observed(wakes=0)) is None


# -- choose_site ----------------------------------------------------------------------------


def test_site_is_the_most_sampled_innermost_user_frame() -> None:
    """Library frames inside user code do not become the site; the user frame calling them does."""
    weighted = Counter({(handler, decode): 5, (helper,): 2})
    frames, site = assemble.choose_site(weighted, UserCode())
    assert site == handler
    assert frames == (handler, decode)


def test_library_only_samples_fall_back_to_the_innermost_frame() -> None:
    """A block seen only in library code gets a library site, unless no fallback is wanted."""
    weighted = Counter({(decode,): 3})
    assert assemble.choose_site(weighted, UserCode())[1] == decode
    assert assemble.choose_site(weighted, UserCode(), fallback=False) == ((), None)


# -- block and cut --------------------------------------------------------------------------


def test_a_block_from_samples() -> None:
    """Duration, wall-clock start, site, kind, task and advice come from the observation."""
    block = block_of(observed(stacks={(handler,): 3}, task="Task-5", coroutine="handler",
                              wakes=3, late_wakes=3, watch_from=10.0))
    assert (block.id, block.loop, block.site, block.function) == (7, "Loop#1", f"{APP}:7",
                                                                   "handler")
    assert block.started == pytest.approx(110.0)
    assert block.duration == pytest.approx(0.2)
    assert block.kind == "cpu" and block.gil_held == 1.0
    assert "process" in block.advice
    assert (block.task, block.coroutine, block.samples, block.source) == (
        "Task-5", "handler", 3, "sampled"
    )


def test_a_block_whose_site_came_from_a_deadman_dump() -> None:
    """A C call holding the GIL: the only stack is faulthandler's, and the block says so."""
    block = block_of(observed(dumps=[((handler, decode), 4)]))
    assert block.source == "deadman"
    assert block.site == f"{APP}:7"
    assert block.samples == 1


def test_a_block_with_no_samples_has_no_site() -> None:
    """An iteration that ended before any look: duration and CPU only."""
    block = block_of(observed(cpu_end=(1.0, None)))
    assert (block.site, block.source, block.kind) == (None, "none", "wait")


def test_a_block_keeps_its_most_sampled_stacks_only() -> None:
    """A pathological iteration sampled at thousands of places keeps a bounded list."""
    stacks = {(Frame(APP, line, "handler"),): 1 + line % 7 for line in range(1, 1001)}
    block = block_of(observed(stacks=stacks))
    assert len(block.stacks) == assemble.STACKS_KEPT
    assert min(s.count for s in block.stacks) >= max(stacks.values()) - 1


def test_mostly_gc_gets_the_gc_advice() -> None:
    """A block that was mostly a garbage collection is advised about the collector."""
    assert "garbage-collection" in block_of(observed(gc_time=0.15)).advice


def test_a_cut_names_user_code_only() -> None:
    """A cut seen only in library code has no site: the loop's machinery is not a culprit."""
    cut = assemble.cut(observed(end=10.02, stacks={(decode,): 2}), loop="L", user_code=UserCode())
    assert cut.site is None
    cut = assemble.cut(observed(end=10.02, stacks={(handler, decode): 2}), loop="L",
                       user_code=UserCode())
    assert (cut.site, cut.function, cut.loop) == (f"{APP}:7", "handler", "L")
    assert cut.duration == pytest.approx(0.02)


# -- the task's own line, when no sample shows the program's code ---------------------------

CALL_SOON = Frame(os.path.join(os.path.dirname(asyncio.__file__), "base_events.py"), 751,
                  "call_soon")


def test_a_block_whose_only_sample_is_past_its_task_is_the_tasks() -> None:
    """A C call that held the GIL let the watchdog in only once the task had returned (in
    asyncio's call_soon): the site is where the task's coroutine begins."""
    parse = Frame(APP, 30, "parse_payload")
    block = block_of(observed(stacks={(CALL_SOON,): 1}, task_frame=parse))
    assert (block.site, block.function) == (parse.location, "parse_payload")
    assert block.frames == (CALL_SOON,)  # the stack is still what was sampled


def test_a_sample_of_the_programs_code_wins_over_the_tasks_line() -> None:
    block = block_of(observed(stacks={(handler, decode): 2}, task_frame=Frame(APP, 3, "main")))
    assert block.site == handler.location


def test_a_task_in_library_code_does_not_name_the_block() -> None:
    block = block_of(observed(stacks={(CALL_SOON,): 1}, task_frame=decode))
    assert block.site == CALL_SOON.location
