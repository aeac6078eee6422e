"""Metrics sinks: Prometheus and OpenTelemetry instruments fed by real sessions on real loops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from workloads import BLOCK, COMPUTE_IN_STEPS, THRESHOLD, marked

import loopwatch
from loopwatch import Block, Report
from loopwatch.metrics import OTHER, OpenTelemetrySink, PrometheusSink
from loopwatch.model import Stall, StallCause

prometheus_client = pytest.importorskip("prometheus_client")
otel_sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

HERE = os.path.abspath(__file__)
CUT = 0.01
#: Long enough for the sinks thread to have run open() on any machine, however busy.
PATIENCE = 30.0


async def block_and_cut(until: Callable[[], bool]) -> None:
    """A few ~10 ms cuts, one ~150 ms block, then wait (without blocking) for ``until()``."""
    await asyncio.sleep(0)
    for _ in range(5):
        time.sleep(CUT)  # block: cut
        await asyncio.sleep(0)
    time.sleep(BLOCK)  # block: block
    await asyncio.sleep(0)
    deadline = time.monotonic() + PATIENCE
    while not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def run_watched(sink: Any, until: Callable[[], bool]) -> Report:
    with loopwatch.watch(threshold=THRESHOLD, sinks=[sink]) as session:
        asyncio.run(block_and_cut(until))
    return session.report()


def make_block(site: str | None) -> Block:
    return Block(
        id=1, loop="loop#1", started=time.time(), duration=BLOCK, cpu_ratio=0.01, kind="wait",
        frames=(), site=site, function="f",
    )


@pytest.fixture
def registry() -> Any:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
def otel() -> Iterator[tuple[Any, InMemoryMetricReader]]:
    """A meter provider of its own, and the reader that collects from it."""
    reader = InMemoryMetricReader()
    provider = otel_sdk_metrics.MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


# -- Prometheus ------------------------------------------------------------------------


def busy_gauges(registry: Any) -> dict[str, float]:
    return {
        s.labels["loop"]: s.value
        for m in registry.collect() if m.name == "loopwatch_loop_busy_ratio"
        for s in m.samples
    }


def test_prometheus_scrape_has_histogram_blocks_and_busy_gauge(registry: Any) -> None:
    """One 150 ms block and a few 10 ms cuts: the scrape shows each, matching the report."""
    gauges: dict[str, float] = {}

    def scraped() -> bool:
        # a scrape from the watched loop's own thread, while it runs
        gauges.update(busy_gauges(registry))
        return bool(gauges)

    report = run_watched(PrometheusSink(registry), scraped)
    (block,) = [b for b in report.blocks if b.site == marked(HERE, "block")]
    (loop,) = {s.loop for s in report.loops}

    busy = {"loop": loop}
    count = registry.get_sample_value("loopwatch_iteration_busy_seconds_count", busy)
    total = registry.get_sample_value("loopwatch_iteration_busy_seconds_sum", busy)
    # every slow iteration the session counted per site reached the histogram, and only those
    assert count == sum(s.count for s in report.sites) >= 1
    assert total == pytest.approx(sum(s.total for s in report.sites))
    assert total >= block.duration >= BLOCK
    below = registry.get_sample_value(
        "loopwatch_iteration_busy_seconds_bucket", {"loop": loop, "le": "0.1"}
    )
    assert below <= count - 1  # the block is over 100 ms

    assert registry.get_sample_value(
        "loopwatch_blocks_total", {"site": block.site, "kind": block.kind, "route": ""}
    ) == 1  # no request: an empty route

    assert loop in gauges, gauges
    assert 0.0 <= gauges[loop] <= 1.0
    # after watch() the loop gauges go (nothing watches the loop); totals stay
    assert busy_gauges(registry) == {}
    assert registry.get_sample_value("loopwatch_blocks_total", {
        "site": block.site, "kind": block.kind, "route": ""}) == 1


def test_blocks_carry_their_route(registry: Any) -> None:
    """A block that ran for a request counts under its route (capped like the sites)."""
    sink = PrometheusSink(registry)
    sink.block(replace(make_block("app.py:3"), request="GET /users/{id}"))
    assert registry.get_sample_value("loopwatch_blocks_total", {
        "site": "app.py:3", "kind": "wait", "route": "GET /users/{id}"}) == 1


def test_prometheus_busy_gauge_is_the_latest_window(registry: Any) -> None:
    """Once a 1-second window has completed, the gauge is that window's busy share."""
    seen: list[tuple[float | None, float | None, float | None]] = []

    async def main(session: loopwatch.Session) -> None:
        time.sleep(BLOCK)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            (stats,) = session.live_loops()
            value = busy_gauges(registry).get(stats.loop)
            before, (now,) = stats.last_window, session.live_loops()
            after = now.last_window
            if before is not None and value is not None:
                seen.append((before, value, after))
                return

    with loopwatch.watch(threshold=THRESHOLD, sinks=[PrometheusSink(registry)]) as session:
        asyncio.run(main(session))
    assert seen, f"no 1-second window completed in {PATIENCE} s"
    (before, value, after) = seen[0]
    # windows roll every second: the scrape saw the one read just before or just after it
    assert value in (before, after)
    assert 0.0 <= value <= 1.0


def test_prometheus_gauge_leaves_with_a_finished_loop(registry: Any) -> None:
    """A finished loop (an init loop before main's) loses its gauge; the running one keeps it."""
    gauges: dict[str, float] = {}

    async def init() -> None:
        time.sleep(BLOCK)  # the loop's last numbers say it was busy: they must not linger

    async def main() -> None:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            gauges.clear()
            gauges.update(busy_gauges(registry))
            if len(gauges) == 1:  # the init loop's, until the watchdog sees it has ended
                return

    with loopwatch.watch(threshold=THRESHOLD, sinks=[PrometheusSink(registry)]) as session:
        asyncio.run(init())
        asyncio.run(main())
    loops = session.report().loops
    (ended,) = [s.loop for s in loops if s.blocks]
    (running,) = [s.loop for s in loops if not s.blocks]
    assert set(gauges) == {running}, (ended, gauges)


def test_prometheus_sink_reused_in_a_second_session(registry: Any) -> None:
    """The same sink in two watch() calls, and a second sink on the same registry, add up."""
    sink = PrometheusSink(registry)
    first = run_watched(sink, lambda: True)
    second = run_watched(PrometheusSink(registry), lambda: True)
    site = marked(HERE, "block")
    kinds = {b.kind for b in first.blocks + second.blocks}
    total = sum(
        registry.get_sample_value(
            "loopwatch_blocks_total", {"site": site, "kind": k, "route": ""}
        ) or 0
        for k in kinds
    )
    assert total == 2
    loops = {s.loop for s in first.loops + second.loops}
    count = sum(
        registry.get_sample_value("loopwatch_iteration_busy_seconds_count", {"loop": loop})
        for loop in loops
    )
    assert count == sum(s.count for s in first.sites + second.sites)


def test_prometheus_caps_sites_and_loops(registry: Any) -> None:
    """Past max_sites sites and max_loops loops, new label values fold into "other"."""
    sink = PrometheusSink(registry, max_sites=2, max_loops=2)
    for n in range(5):
        sink.block(make_block(f"app.py:{n}"))
        sink.slow_iteration(f"loop#{n}", 0.01, None, False)
    sink.block(make_block(None))
    blocks = {
        s.labels["site"]: s.value
        for m in registry.collect() if m.name == "loopwatch_blocks"
        for s in m.samples if s.name == "loopwatch_blocks_total"
    }
    assert blocks == {"app.py:0": 1, "app.py:1": 1, OTHER: 4}
    counts = {
        s.labels["loop"]: s.value
        for m in registry.collect() if m.name == "loopwatch_iteration_busy_seconds"
        for s in m.samples if s.name.endswith("_count")
    }
    assert counts == {"loop#0": 1, "loop#1": 1, OTHER: 3}


def test_prometheus_sinks_on_one_registry_must_agree(registry: Any) -> None:
    """A second sink with other buckets on the same metrics is refused, saying what differs."""
    PrometheusSink(registry)
    with pytest.raises(ValueError, match=r"already made the 'loopwatch' metrics .* buckets="):
        PrometheusSink(registry, buckets=(0.1, 1.0))
    PrometheusSink(registry, namespace="other_app", buckets=(0.1, 1.0))  # another namespace is fine


def test_prometheus_name_clash_says_so_and_leaves_nothing_behind(registry: Any) -> None:
    """Metric names already taken in the registry: a clear error, and no half-made metrics."""
    prometheus_client.Counter("loopwatch_blocks", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="namespace"):
        PrometheusSink(registry)
    names = {m.name for m in registry.collect()}
    assert names == {"loopwatch_blocks"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"namespace": "9lives"}, "invalid namespace '9lives'"),
        ({"buckets": ()}, "invalid buckets"),
        ({"buckets": (0.5, 0.1)}, "invalid buckets"),
        ({"max_sites": 0}, "invalid max_sites 0"),
        ({"max_loops": True}, "invalid max_loops True"),
    ],
)
def test_prometheus_bad_options_name_the_problem(
    registry: Any, options: dict[str, Any], message: str
) -> None:
    """Bad options fail at once with a message naming the option and the value."""
    with pytest.raises(ValueError, match=message):
        PrometheusSink(registry, **options)


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus_client, making the sink says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"install loopwatch\[prometheus\]"):
        PrometheusSink()
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ImportError, match=r"install loopwatch\[otel\]"):
        OpenTelemetrySink()


# -- OpenTelemetry ---------------------------------------------------------------------


def test_otel_reader_sees_histogram_blocks_and_busy_gauge(
    otel: tuple[Any, InMemoryMetricReader],
) -> None:
    """The same workload read through an InMemoryMetricReader: histogram, counter, gauge."""
    provider, reader = otel
    gauges: list[Any] = []

    def collected() -> bool:
        gauges.extend(otel_points(reader).get("loopwatch.loop.busy_ratio", ()))
        return bool(gauges)

    report = run_watched(OpenTelemetrySink(provider), collected)
    (block,) = [b for b in report.blocks if b.site == marked(HERE, "block")]
    (loop,) = {s.loop for s in report.loops}
    points = otel_points(reader)

    (histogram,) = points["loopwatch.iteration.busy"]
    assert histogram.attributes == {"loop": loop}
    assert histogram.count == sum(s.count for s in report.sites) >= 1
    assert histogram.sum == pytest.approx(sum(s.total for s in report.sites))
    assert histogram.max >= BLOCK
    assert 0.1 in histogram.explicit_bounds  # seconds, not the default millisecond buckets

    blocks = {(p.attributes["site"], p.attributes["kind"]): p.value
              for p in points["loopwatch.blocks"]}
    assert blocks[block.site, block.kind] == 1

    assert {p.attributes["loop"] for p in gauges} == {loop}
    assert all(0.0 <= p.value <= 1.0 for p in gauges)
    assert "loopwatch.loop.busy_ratio" not in points  # the session ended: no more gauge


def test_otel_caps_sites(otel: tuple[Any, InMemoryMetricReader]) -> None:
    """Past max_sites, OpenTelemetry attributes fold into "other" too; sinks share instruments."""
    provider, reader = otel
    sink = OpenTelemetrySink(provider, max_sites=1)
    again = OpenTelemetrySink(provider, max_sites=1)
    sink.block(make_block("a.py:1"))
    again.block(make_block("b.py:2"))
    sink.block(make_block("c.py:3"))
    values = {p.attributes["site"]: p.value for p in otel_points(reader)["loopwatch.blocks"]}
    assert values == {"a.py:1": 1, OTHER: 2}
    with pytest.raises(ValueError, match="max_sites=1"):
        OpenTelemetrySink(provider, max_sites=5)


# -- stalls ------------------------------------------------------------------------------

#: A watched loop computing in 2 ms steps, with a PrometheusSink: it prints its report's
#: stalls and blocks and the scraped stall counters once done.
STALLED_PROGRAM = COMPUTE_IN_STEPS + textwrap.dedent("""
    import json, sys
    import prometheus_client, loopwatch
    from loopwatch.metrics import PrometheusSink

    registry = prometheus_client.CollectorRegistry()

    async def main(seconds):
        print("ready", flush=True)
        await compute_in_steps(seconds)

    with loopwatch.watch(threshold=0.05, sinks=[PrometheusSink(registry)]) as session:
        asyncio.run(main(float(sys.argv[1])))
    report = session.report()
    counters = [[s.labels["loop"], s.labels["cause"], s.value] for m in registry.collect()
                if m.name == "loopwatch_stalls" for s in m.samples
                if s.name == "loopwatch_stalls_total"]
    print(json.dumps({"stalls": [[s.loop, s.cause] for s in report.stalls],
                      "blocks": [b.site for b in report.blocks], "counters": counters}))
""")


def test_prometheus_counts_the_stalls_of_a_stopped_process(tmp_path: Path) -> None:
    """A watched process stopped twice for 200 ms mid-computation: its stalls are counted
    per loop and cause, as its report has them, and no block is."""
    program = tmp_path / "stalled.py"
    program.write_text(STALLED_PROGRAM, encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(program), "2.0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.4)
        for _ in range(2):
            os.kill(process.pid, signal.SIGSTOP)
            time.sleep(0.2)
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.5)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    found = json.loads(out)
    # each stop is one "paused" stall (a busy machine may add "starved" ones)
    assert found["blocks"] == [], found
    assert [cause for _, cause in found["stalls"]].count("paused") == 2, found
    expected = Counter((loop, cause) for loop, cause in found["stalls"])
    assert {(loop, cause): value for loop, cause, value in found["counters"]} == expected


def make_stall(loop: str, cause: StallCause = "starved") -> Stall:
    return Stall(loop=loop, started=time.time(), duration=BLOCK, cause=cause,
                 queued=BLOCK if cause == "starved" else 0.0,
                 paused=BLOCK if cause == "paused" else 0.0)


def test_prometheus_stalls_share_the_loop_cap(registry: Any) -> None:
    """Stall loops fold into "other" past max_loops, like the histogram's; causes are kept."""
    sink = PrometheusSink(registry, max_loops=2)
    for n in range(4):
        sink.stall(make_stall(f"loop#{n}"))
    sink.stall(make_stall("loop#0", "paused"))
    stalls = {
        (s.labels["loop"], s.labels["cause"]): s.value
        for m in registry.collect() if m.name == "loopwatch_stalls"
        for s in m.samples if s.name == "loopwatch_stalls_total"
    }
    assert stalls == {("loop#0", "starved"): 1, ("loop#1", "starved"): 1,
                      (OTHER, "starved"): 2, ("loop#0", "paused"): 1}
    assert registry.get_sample_value("loopwatch_blocks_total", {
        "site": "app.py:1", "kind": "wait", "route": ""}) is None  # a stall is no block


def test_otel_counts_stalls_per_loop_and_cause(otel: tuple[Any, InMemoryMetricReader]) -> None:
    """OpenTelemetry's loopwatch.stalls counter: per loop and cause, loops capped."""
    provider, reader = otel
    sink = OpenTelemetrySink(provider, max_loops=1)
    sink.stall(make_stall("loop#1"))
    sink.stall(make_stall("loop#1", "paused"))
    sink.stall(make_stall("loop#2", "throttled"))
    sink.stall(make_stall("loop#1"))
    points = otel_points(reader)
    values = {(p.attributes["loop"], p.attributes["cause"]): p.value
              for p in points["loopwatch.stalls"]}
    assert values == {("loop#1", "starved"): 2, ("loop#1", "paused"): 1,
                      (OTHER, "throttled"): 1}
    assert "loopwatch.blocks" not in points
