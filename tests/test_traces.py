"""OpenTelemetry: a block shows up in the trace of the request it stalled (Python 3.12+)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")
pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="a task's context can be read from 3.12 (get_context)"
)

PROGRAM = """
import asyncio, json, time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import loopwatch

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("app")


async def open_span_handler():
    with tracer.start_as_current_span("GET /report"):
        await asyncio.sleep(0.01)
        time.sleep(0.12)  # blocks while the span is open
        await asyncio.sleep(0.05)


async def closing_handler():
    with tracer.start_as_current_span("POST /login"):
        await asyncio.sleep(0.01)
        time.sleep(0.12)  # blocks, and the span ends in the same iteration


async def main():
    await open_span_handler()
    await asyncio.sleep(0.05)
    await closing_handler()
    await asyncio.sleep(0.05)


with loopwatch.watch(threshold=0.05):
    asyncio.run(main())
spans = [
    {"name": s.name, "id": s.context.span_id, "parent": s.parent.span_id if s.parent else None,
     "events": [{"name": e.name, "attributes": dict(e.attributes)} for e in s.events],
     "attributes": dict(s.attributes), "duration": (s.end_time - s.start_time) / 1e9}
    for s in exporter.get_finished_spans()
]
print(json.dumps(spans))
"""


def _line(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


def test_a_block_becomes_an_event_or_a_child_span_of_its_request(tmp_path: Path) -> None:
    source = textwrap.dedent(PROGRAM)
    (tmp_path / "prog.py").write_text(source)
    result = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    spans = {s["name"]: s for s in json.loads(result.stdout.splitlines()[-1])}

    (event,) = spans["GET /report"]["events"]
    assert event["name"] == "loopwatch.block"
    attributes = event["attributes"]
    assert attributes["code.line.number"] == _line(source, "blocks while the span is open")
    assert attributes["code.file.path"].endswith("prog.py")
    assert attributes["loopwatch.kind"] == "wait"
    assert 100 <= attributes["loopwatch.duration_ms"] <= 300

    child = spans["loopwatch.block"]
    assert child["parent"] == spans["POST /login"]["id"]
    assert child["attributes"]["code.line.number"] == _line(source, "span ends in the same")
    assert 0.1 <= child["duration"] <= 0.3
