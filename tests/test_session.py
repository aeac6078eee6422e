"""watch() and run(): configuration, results, sinks, modes, and cleaning up after itself."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import pytest
import schemas
from workloads import BLOCK, THRESHOLD

import loopwatch
from loopwatch import Block, Config, ConfigError, LoopBlockedError, Report
from loopwatch.watchdog import WATCHDOG


async def _block_once(seconds: float = BLOCK) -> None:
    await asyncio.sleep(0)
    time.sleep(seconds)
    await asyncio.sleep(0)


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, "abc", float("nan"), True])
def test_bad_threshold_names_field_and_value(value: Any) -> None:
    """A threshold that is not a positive number fails fast, naming the field and the value."""
    with pytest.raises(ValueError, match=r"invalid loopwatch threshold .* expected a number"):
        loopwatch.watch(threshold=value)


def test_bad_mode_lists_allowed_values() -> None:
    """An unknown mode says which modes exist."""
    with pytest.raises(ConfigError, match="report, log, raise"):
        loopwatch.watch(mode="loud")


def test_unknown_option_is_a_type_error() -> None:
    """A misspelt option is reported with the list of known ones."""
    with pytest.raises(TypeError, match="unknown loopwatch option 'treshold'"):
        loopwatch.watch(treshold=0.1)


def test_sample_interval_must_be_below_threshold() -> None:
    """Sampling slower than the threshold could never see a block: refused."""
    with pytest.raises(ConfigError, match="sample_interval"):
        loopwatch.watch(threshold=0.05, sample_interval=0.1)


def test_environment_fills_unset_options() -> None:
    """LOOPWATCH_* variables fill in what the call did not set; the call wins."""
    env = {"LOOPWATCH_THRESHOLD": "0.25", "LOOPWATCH_MODE": "log"}
    assert Config.resolve(env=env).threshold == 0.25
    assert Config.resolve(env=env).mode == "log"
    assert Config.resolve(env=env, threshold=0.5).threshold == 0.5


def test_bad_environment_value_names_the_variable() -> None:
    """A bad value from the environment names the variable it came from."""
    with pytest.raises(ConfigError, match="environment variable LOOPWATCH_THRESHOLD"):
        Config.resolve(env={"LOOPWATCH_THRESHOLD": "soon"})
    with pytest.raises(ConfigError, match="environment variable LOOPWATCH_THRESHOLD"):
        Config.resolve(env={"LOOPWATCH_THRESHOLD": "-3"})


def test_site_threshold_defaults_to_a_tenth_with_a_floor() -> None:
    """Per-site aggregation starts at threshold / 10, never below 2 ms."""
    assert Config(threshold=0.1).effective_site_threshold == pytest.approx(0.01)
    assert Config(threshold=0.005).effective_site_threshold == pytest.approx(0.002)


# -- results -----------------------------------------------------------------------------


def test_report_json_round_trip(tmp_path: Any) -> None:
    """A report saved as JSON loads back equal, with the documented schema fields."""
    with loopwatch.watch(threshold=THRESHOLD) as session:
        asyncio.run(_block_once())
    report = session.report()
    path = tmp_path / "report.json"
    report.save(path)
    data = schemas.read(path)
    assert data["schema"] == 1
    assert data["threshold"] == THRESHOLD
    (block,) = data["blocks"]
    for key in ("duration", "cpu_ratio", "kind", "frames", "task", "site"):
        assert key in block
    assert block["frames"][-1].keys() == {"file", "line", "function"}
    # (a busy machine may add a site of slow iterations under the threshold)
    (site,) = [site for site in data["sites"] if site["blocks"]]
    assert site["count"] == 1 and site["site"] == block["site"]
    assert Report.load(path) == report


def test_report_rejects_other_schemas() -> None:
    """Loading a report of an unknown schema says so."""
    with pytest.raises(ValueError, match="schema"):
        Report.from_dict({"schema": 99, "threshold": 0.1})


def test_sites_aggregate_blocks_at_one_line() -> None:
    """Three blocks at one line make one site with count 3 and their total."""

    async def main() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            time.sleep(0.08)

    with loopwatch.watch(threshold=THRESHOLD) as session:
        asyncio.run(main())
    report = session.report()
    assert len(report.blocks) == 3
    (site,) = report.sites
    assert site.count == 3
    assert site.total == pytest.approx(sum(b.duration for b in report.blocks))
    assert site.max == max(b.duration for b in report.blocks)
    assert site.kind == "wait"


def test_max_blocks_bounds_memory_but_sites_keep_counting() -> None:
    """Past max_blocks old blocks are dropped, counted, and still aggregated per site."""

    async def main() -> None:
        for _ in range(4):
            await asyncio.sleep(0)
            time.sleep(0.07)

    with loopwatch.watch(threshold=THRESHOLD, max_blocks=2) as session:
        asyncio.run(main())
    report = session.report()
    assert len(report.blocks) == 2
    assert report.dropped_blocks == 2
    assert report.sites[0].count == 4


def test_report_while_watching() -> None:
    """report() during the session already holds blocks that have ended."""
    seen: list[int] = []

    async def main() -> None:
        await _block_once()
        seen.append(len(session.report().blocks))

    with loopwatch.watch(threshold=THRESHOLD) as session:
        asyncio.run(main())
    assert seen == [1]


def test_loop_stats_cover_each_loop() -> None:
    """Each watched loop gets its LoopStats with the blocks it had."""
    with loopwatch.watch(threshold=THRESHOLD) as session:
        asyncio.run(_block_once())
        asyncio.run(asyncio.sleep(0.01))
    loops = session.report().loops
    assert len(loops) == 2
    assert sorted(loop.blocks for loop in loops) == [0, 1]
    assert all(loop.watched > 0 for loop in loops)


# -- sinks and modes ---------------------------------------------------------------------


def test_on_block_callback_gets_each_block() -> None:
    """on_block is called once per block with the Block."""
    got: list[Block] = []
    with loopwatch.watch(threshold=THRESHOLD, on_block=got.append) as session:
        asyncio.run(_block_once())
    assert got == list(session.report().blocks)
    assert len(got) == 1


def test_failing_on_block_does_not_break_the_program(caplog: Any) -> None:
    """An on_block that raises is logged once; the program and detection go on."""

    def broken(block: Block) -> None:
        raise RuntimeError("sink down")

    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD, on_block=broken
    ) as session:
        asyncio.run(_block_once())
        asyncio.run(_block_once())
    assert len(session.report().blocks) == 2
    messages = [r.getMessage() for r in caplog.records if "on_block" in r.getMessage()]
    assert messages == ["loopwatch on_block callback raised; it keeps being called"]


def test_each_block_logs_one_warning(caplog: Any) -> None:
    """Each block is logged once on loopwatch.blocks, with duration, kind, line and task."""
    with caplog.at_level(logging.WARNING, logger="loopwatch"), loopwatch.watch(
        threshold=THRESHOLD
    ):
        asyncio.run(_block_once())
    (record,) = [r for r in caplog.records if r.name == "loopwatch.blocks"]
    text = record.getMessage()
    assert text.startswith("event loop blocked for ")
    assert "(wait)" in text and "test_session.py:" in text and "task Task-" in text


def test_raise_mode_raises_when_the_watch_ends() -> None:
    """mode='raise' raises LoopBlockedError at the end of the with block, naming the line."""
    expected = r"blocked 1 time.*test_session\.py:\d+"
    with pytest.raises(LoopBlockedError, match=expected) as info, loopwatch.watch(
        threshold=THRESHOLD, mode="raise"
    ):
        asyncio.run(_block_once())
    assert len(info.value.report.blocks) == 1


def test_raise_mode_is_quiet_without_blocks() -> None:
    """mode='raise' does nothing when the loop never blocked."""
    with loopwatch.watch(threshold=THRESHOLD, mode="raise") as session:
        asyncio.run(asyncio.sleep(0.01))
    assert not session.report().blocks


# -- surfaces ----------------------------------------------------------------------------


def test_async_with_inside_a_running_loop() -> None:
    """async with watch() inside a running loop watches that loop from then on."""

    async def main() -> Report:
        async with loopwatch.watch(threshold=THRESHOLD) as session:
            await _block_once()
        return session.report()

    report = asyncio.run(main())
    assert len(report.blocks) == 1


def test_run_returns_the_result_and_prints_a_summary() -> None:
    """loopwatch.run runs the coroutine, returns its result and prints the blocks."""
    import io

    out = io.StringIO()

    async def main() -> int:
        await _block_once()
        return 42

    assert loopwatch.run(main(), threshold=THRESHOLD, file=out) == 42
    text = out.getvalue()
    assert "loopwatch: 1 block over 50.0 ms" in text
    assert "test_session.py:" in text


def test_sessions_can_nest_with_their_own_thresholds() -> None:
    """An inner session with a lower threshold sees blocks the outer one does not."""

    async def main() -> None:
        await _block_once(0.08)

    with loopwatch.watch(threshold=0.1) as outer, loopwatch.watch(threshold=THRESHOLD) as inner:
        asyncio.run(main())
    assert len(inner.report().blocks) == 1
    assert not outer.report().blocks


def test_session_cannot_be_restarted() -> None:
    """A stopped session says to call watch() again."""
    session = loopwatch.watch(threshold=THRESHOLD)
    with session:
        pass
    with pytest.raises(RuntimeError, match="call watch"):
        session.start()


def test_everything_is_restored_after_watch() -> None:
    """After watch() exits: no watchdog thread, no patched method, no wrapped selector."""
    loop = asyncio.new_event_loop()
    try:
        selector = loop._selector  # type: ignore[attr-defined]
        with loopwatch.watch(threshold=THRESHOLD):
            loop.run_until_complete(_block_once())
            assert any(t.name == "loopwatch-watchdog" for t in threading.enumerate())
            assert WATCHDOG.active()
        assert "select" not in vars(selector)
        assert "run_forever" not in vars(loop)
        assert not WATCHDOG.active()
        assert not any(t.name == "loopwatch-watchdog" for t in threading.enumerate())
    finally:
        loop.close()


def test_public_api_is_what_all_says() -> None:
    """Every name in loopwatch.__all__ resolves, and nothing else public is exported."""
    for name in loopwatch.__all__:
        assert getattr(loopwatch, name) is not None
    import importlib

    importlib.import_module("loopwatch.offload")  # the subpackage, imported first
    assert loopwatch.offload.__name__ == "offload"  # still the decorator
    assert callable(loopwatch.offload)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = loopwatch.nothing  # type: ignore[attr-defined]


def test_importing_loopwatch_is_cheap() -> None:
    """import loopwatch loads neither asyncio machinery nor the watchdog (pytest imports it)."""
    import subprocess
    import sys

    code = "import sys, loopwatch; print(sorted(m for m in sys.modules if 'loopwatch' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['loopwatch']"


def test_loop_stats_carry_a_timeline_of_busy_share_and_lag() -> None:
    """One point per whole second: wall-clock start, busy share, worst lag; JSON keeps it."""

    async def main() -> None:
        for _ in range(3):
            time.sleep(0.3)
            await asyncio.sleep(0.7)

    began = time.time()
    with loopwatch.watch(threshold=0.1) as session:
        asyncio.run(main())
    report = session.report()
    (loop,) = report.loops
    assert len(loop.timeline) >= 2
    starts = [start for start, _, _ in loop.timeline]
    assert starts == sorted(starts) and began - 1 <= starts[0] <= time.time()
    # each second holds a 300 ms block: busy about 30% and a heartbeat answered late
    assert max(share for _, share, _ in loop.timeline) >= 0.2
    assert max(lag or 0.0 for _, _, lag in loop.timeline) >= 0.1
    again = loopwatch.Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.loops[0].timeline == loop.timeline
