"""OpenTelemetry traces: a block shows up in the trace of the request it stalled.

Nothing to set up: when the program uses OpenTelemetry tracing (the ``otel``
extra) and the blocked task has an active span, the watchdog notes that span
as it samples the block, and once the block is finished:

- if the span is still recording, it gets an event ``loopwatch.block`` at the
  block's start, with ``loopwatch.duration_ms``, ``loopwatch.kind``,
  ``loopwatch.cpu_ratio``, ``code.file.path``, ``code.line.number`` and
  ``code.function.name``;
- if it has ended already (a handler that blocks and then answers ends its
  request's span in the same loop iteration), a child span ``loopwatch.block``
  of it, from the block's start to its end, carries the same attributes.

Either is done in loopwatch's sinks thread, never the loop's nor the
watchdog's: an exporter that sends spans as they end costs neither.

A task's span is read from its context, which Python gives access to from 3.12
(``Task.get_context``); on 3.11 blocks are not added to traces.
"""

from __future__ import annotations

import sys
from typing import Any

from loopwatch._log import log_once
from loopwatch.model import Block

#: Name of the event (or child span) a block becomes in a trace.
EVENT = "loopwatch.block"


def span_of(task: Any) -> Any:
    """The recording OpenTelemetry span active in ``task``, or None (cheap when unused)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None  # the program does not trace
    get_context = getattr(task, "get_context", None)
    if get_context is None:
        return None  # Python 3.11: a task's context cannot be read
    try:
        runtime = sys.modules["opentelemetry.context"]._RUNTIME_CONTEXT
        current = get_context().get(runtime._current_context)
        if current is None:
            return None
        span = trace.get_current_span(current)
        return span if span.get_span_context().is_valid else None
    except Exception:
        log_once("otel-span", "loopwatch could not read the OpenTelemetry span of a task")
        return None


def attributes(block: Block) -> dict[str, Any]:
    out: dict[str, Any] = {
        "loopwatch.duration_ms": round(block.duration * 1000, 3),
        "loopwatch.kind": block.kind,
    }
    if block.cpu_ratio is not None:
        out["loopwatch.cpu_ratio"] = round(block.cpu_ratio, 3)
    frame = block.user_frame
    if frame is not None:
        out["code.file.path"] = frame.file
        out["code.line.number"] = frame.line
        out["code.function.name"] = frame.function
    if block.request:
        out["loopwatch.request"] = block.request
    return out


def record(span: Any, block: Block) -> None:
    """Add ``block`` to ``span``'s trace (see the module docstring); in the sinks thread."""
    start = int(block.started * 1e9)  # wall clock, as OpenTelemetry wants it
    if span.is_recording():
        span.add_event(EVENT, attributes(block), timestamp=start)
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("loopwatch")
    child = tracer.start_span(
        EVENT, context=trace.set_span_in_context(span), start_time=start,
        attributes=attributes(block),
    )
    child.end(end_time=start + int(block.duration * 1e9))
