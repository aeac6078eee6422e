"""Metrics sinks: what a watch session finds, as Prometheus or OpenTelemetry instruments.

Both sinks export the same four things, so dashboards and alerts can use them:

- a histogram of the busy time of slow loop iterations, per loop;
- the busy share of each loop (a gauge read when metrics are collected, plus
  the heartbeat lag p99), per loop;
- a count of blocks per site (``file:line``) and kind (cpu, wait, mixed, gc, unknown);
- a count of stalls per loop and cause (starved, throttled, paused): long
  iterations the machine caused, not the program, which are not blocks. An
  alert on blocks stays quiet when the host is overloaded; this one tells that.

Each needs its library, which is an optional extra: ``pip install
'loopwatch[prometheus]'`` or ``'loopwatch[otel]'``. Importing this module
needs neither; making a sink without its library raises ImportError saying
which extra to install.

Label values are bounded: a test suite makes thousands of loops and a program
can block on thousands of lines, and every distinct label value is a time
series kept forever by the metrics backend. The first ``max_loops`` loops and
``max_sites`` sites get their own label; later ones are counted under
``"other"``.
"""

from __future__ import annotations

import math
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from loopwatch._log import log_once
from loopwatch.sinks import Sink, WatchedSession

if TYPE_CHECKING:
    from loopwatch.model import Block, LoopStats, Stall

__all__ = ["DEFAULT_BUCKETS", "OTHER", "OpenTelemetrySink", "PrometheusSink"]

#: Histogram bucket bounds, seconds. Slow iterations start at the session's
#: site_threshold (2 ms at least), so nothing finer is useful.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

#: The label value of loops and sites past the ``max_loops`` / ``max_sites`` caps.
OTHER = "other"

#: The site label of a block whose stack named no line of user code.
UNKNOWN_SITE = "<unknown>"

_HISTOGRAM_DOC = (
    "Busy time of event-loop iterations slower than the session's site_threshold "
    "(threshold/10, at least 2 ms, by default), blocks included; faster iterations are "
    "not timed one by one, so they are not counted."
)
_BUSY_DOC = (
    "Share of the latest complete 1-second window the loop spent running callbacks "
    "(before the first window completes: over the time watched so far). Loops folded "
    "into loop=\"other\" report the busiest of them."
)
_LAG_DOC = (
    "99th percentile of the loop's lag, seconds: how late a callback scheduled from "
    "another thread ran (recent heartbeats)."
)
_BLOCKS_DOC = (
    "Event-loop blocks (iterations busy longer than the threshold), per site, kind and "
    "route (the request's route template; empty outside a request)."
)

_STALLS_DOC = (
    "Stalls: loop iterations longer than the threshold because the machine did not run "
    "the loop's thread (cause: starved = waiting for a CPU, throttled = the cgroup's CPU "
    "quota ran out, paused = the process was stopped). Not blocks, and not counted in "
    "blocks_total."
)

_PROMETHEUS_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _require(module: str, extra: str, who: str) -> Any:
    """Import an optional dependency, or say which loopwatch extra brings it."""
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"loopwatch.metrics.{who} needs {module.split('.')[0]}: "
            f"install loopwatch[{extra}] (pip install 'loopwatch[{extra}]')",
            name=exc.name,
        ) from exc


def _check_cap(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"invalid {name} {value!r}: expected a whole number >= 1, e.g. 100")
    return value


def _check_buckets(buckets: object) -> tuple[float, ...]:
    try:
        bounds = tuple(float(b) for b in buckets)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        bounds = ()
    finite = [b for b in bounds if not math.isinf(b)]  # prometheus adds +Inf itself
    if (
        not finite
        or any(math.isnan(b) or b <= 0 for b in finite)
        or any(a >= b for a, b in pairwise(finite))
    ):
        raise ValueError(
            f"invalid buckets {buckets!r}: expected increasing numbers of seconds > 0, "
            "e.g. (0.005, 0.05, 0.5)"
        )
    return tuple(finite)


class _Fold:
    """Bounded label values: the first ``cap`` distinct values, then ``OTHER``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        known = self._known
        if value in known:  # the common case, without the lock (set reads are atomic)
            return value
        with self._lock:
            if value in known or len(known) < self.cap:
                known.add(value)
                return value
        return OTHER


class _Shared:
    """What every sink feeding one set of instruments shares.

    Instruments cannot be made twice in one Prometheus registry or OpenTelemetry
    meter provider, so they are made once per registry (and namespace) or
    provider, and every sink pointed there feeds them: a sink reused in a second
    ``watch()``, two sinks, or two sessions at once all work. The loop gauges
    are there while one of those sessions is open.
    """

    def __init__(self, settings: tuple[Any, ...], max_sites: int, max_loops: int) -> None:
        self.settings = settings
        self.sites = _Fold(max_sites)
        self.loops = _Fold(max_loops)
        #: request labels are capped where they are made too; routes share the sites' cap
        self.routes = _Fold(max_sites)
        self._lock = threading.Lock()
        self._sessions: dict[WatchedSession, int] = {}

    def bind(self, session: WatchedSession) -> None:
        with self._lock:
            self._sessions[session] = self._sessions.get(session, 0) + 1

    def unbind(self, session: WatchedSession) -> None:
        with self._lock:
            left = self._sessions.pop(session, 0) - 1
            if left > 0:
                self._sessions[session] = left

    def loop_values(self) -> dict[str, tuple[float | None, float | None]]:
        """Per (folded) loop label: busy share and lag p99 of the loops running now.

        Loops folded together report the largest value: an alert on a busy
        loop must not be averaged away.
        """
        with self._lock:
            watching = next((s for s in self._sessions if s.running), None)
        values: dict[str, tuple[float | None, float | None]] = {}
        if watching is None:
            return values
        # Running loops only, not live_loops(): that one also keeps the last numbers
        # of loops that have finished (an `asyncio.run(init())` before
        # `asyncio.run(main())`), which would hold a gauge at a stale value forever.
        # Every session sees every loop of the process: one session's view is enough.
        for stats in watching.running_loops():
            label = self.loops(stats.loop)
            busy, lag = _busy_share(stats), stats.lag_p99
            old_busy, old_lag = values.get(label, (None, None))
            values[label] = (_larger(old_busy, busy), _larger(old_lag, lag))
        return values


def _busy_share(stats: LoopStats) -> float | None:
    if stats.last_window is not None:
        return stats.last_window
    return stats.busy_fraction_sampled


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


class _SharedSink(Sink):
    """Binds each session it is opened for to its shared instruments; unbinds on close."""

    _shared: _Shared

    def __init__(self) -> None:
        self._opened: list[WatchedSession] = []
        self._opened_lock = threading.Lock()

    def open(self, session: WatchedSession) -> None:
        with self._opened_lock:
            self._opened.append(session)
        self._shared.bind(session)

    def close(self) -> None:
        # close() does not say which session ended: the same sink may be open in
        # several at once, so release every one that has stopped.
        with self._opened_lock:
            ended = [s for s in self._opened if not s.running]
            if not ended and self._opened:
                ended = [self._opened[0]]
            for session in ended:
                self._opened.remove(session)
        for session in ended:
            self._shared.unbind(session)


# -- Prometheus ----------------------------------------------------------------

_prometheus_lock = threading.Lock()
#: registry -> namespace -> the instruments loopwatch made there
_prometheus_sets: weakref.WeakKeyDictionary[Any, dict[str, _PrometheusSet]] = (
    weakref.WeakKeyDictionary()
)


class _PrometheusSet(_Shared):
    def __init__(
        self,
        client: Any,
        registry: Any,
        namespace: str,
        buckets: tuple[float, ...],
        max_sites: int,
        max_loops: int,
    ) -> None:
        super().__init__((buckets, max_sites, max_loops), max_sites, max_loops)
        prefix = f"{namespace}_" if namespace else ""
        self.busy_name = f"{prefix}loop_busy_ratio"
        self.lag_name = f"{prefix}loop_lag_p99_seconds"
        made: list[Any] = []
        try:
            self.histogram = client.Histogram(
                f"{prefix}iteration_busy_seconds", _HISTOGRAM_DOC, ["loop"],
                registry=registry, buckets=buckets,
            )
            made.append(self.histogram)
            self.blocks = client.Counter(
                f"{prefix}blocks", _BLOCKS_DOC, ["site", "kind", "route"], registry=registry
            )
            made.append(self.blocks)
            self.stalls = client.Counter(
                f"{prefix}stalls", _STALLS_DOC, ["loop", "cause"], registry=registry
            )
            made.append(self.stalls)
            collector = _LoopCollector(self)
            registry.register(collector)
            made.append(collector)
        except ValueError as exc:
            for collector in made:
                registry.unregister(collector)
            raise ValueError(
                f"cannot make loopwatch's metrics in this registry ({exc}): another "
                f"library already uses these names; pass PrometheusSink(namespace=...) "
                f"other than {namespace!r}"
            ) from exc


class _LoopCollector:
    """Reads the loop gauges when Prometheus scrapes: no thread polls for them."""

    def __init__(self, shared: _PrometheusSet) -> None:
        from prometheus_client.core import GaugeMetricFamily

        self._family = GaugeMetricFamily
        self._shared = shared

    def _families(self) -> tuple[Any, Any]:
        shared = self._shared
        return (
            self._family(shared.busy_name, _BUSY_DOC, labels=["loop"]),
            self._family(shared.lag_name, _LAG_DOC, labels=["loop"]),
        )

    def describe(self) -> Iterator[Any]:
        # Lets the registry check names at register() without collecting.
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        busy, lag = self._families()
        try:
            values = self._shared.loop_values()
        except Exception:
            # A scrape must not fail because of us: the service's other metrics matter more.
            log_once("metrics-prometheus-collect", "loopwatch could not read loop statistics")
            values = {}
        for loop, (share, p99) in sorted(values.items()):
            if share is not None:
                busy.add_metric([loop], share)
            if p99 is not None:
                lag.add_metric([loop], p99)
        yield busy
        yield lag


class PrometheusSink(_SharedSink):
    """Export what a session finds as Prometheus metrics (needs ``loopwatch[prometheus]``).

    Metrics (``loopwatch`` is the ``namespace``):

    - ``loopwatch_iteration_busy_seconds{loop}``: histogram of the busy time of
      iterations slower than the session's ``site_threshold`` (threshold / 10,
      at least 2 ms), blocks included. Faster iterations are not timed one by
      one, so they are not in it: ``_count`` counts slow iterations only.
    - ``loopwatch_loop_busy_ratio{loop}``: busy share of the latest complete
      1-second window, read from the session at scrape time.
    - ``loopwatch_loop_lag_p99_seconds{loop}``: heartbeat lag p99, likewise.
    - ``loopwatch_blocks_total{site,kind,route}``: blocks per ``file:line``, kind
      and route.
    - ``loopwatch_stalls_total{loop,cause}``: stalls (iterations over the
      threshold because the machine did not run the loop's thread: ``starved``,
      ``throttled``, ``paused``) per loop and cause. Stalls are not blocks.

    The loop gauges cover the loops running now, while the sink's session is
    open: a finished loop's gauges go, and after ``watch()`` ends all of them
    do, while the histogram and counters keep their totals.
    The first ``max_loops`` loops and ``max_sites`` sites get their own label
    value, the rest ``"other"``. Sinks given the same registry and namespace
    share one set of metrics (and so must agree on ``buckets`` and the caps),
    so a sink can be reused in later sessions and several can coexist.

    In a service, use the default registry and serve it::

        prometheus_client.start_http_server(9000)
        with loopwatch.watch(threshold=0.1, sinks=[PrometheusSink()]):
            asyncio.run(main())

    >>> import asyncio, time, loopwatch, prometheus_client
    >>> from loopwatch.metrics import PrometheusSink
    >>> registry = prometheus_client.CollectorRegistry()
    >>> async def main():
    ...     time.sleep(0.2)  # blocks the loop
    >>> with loopwatch.watch(threshold=0.1, sinks=[PrometheusSink(registry)]):
    ...     asyncio.run(main())
    >>> [s.value for m in registry.collect() for s in m.samples if s.name.endswith("blocks_total")]
    [1.0]
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "loopwatch",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_sites: int = 100,
        max_loops: int = 20,
    ) -> None:
        super().__init__()
        client = _require("prometheus_client", "prometheus", "PrometheusSink")
        if registry is None:
            registry = client.REGISTRY
        elif not (hasattr(registry, "register") and hasattr(registry, "unregister")):
            raise TypeError(
                f"invalid registry {registry!r}: expected a prometheus_client "
                "CollectorRegistry, or None for the default one"
            )
        if not isinstance(namespace, str) or (
            namespace and not _PROMETHEUS_NAME.fullmatch(namespace)
        ):
            raise ValueError(
                f"invalid namespace {namespace!r}: expected letters, digits, '_' or ':' "
                "(not starting with a digit), or '' for none, e.g. 'myapp_loopwatch'"
            )
        bounds = _check_buckets(buckets)
        max_sites = _check_cap("max_sites", max_sites)
        max_loops = _check_cap("max_loops", max_loops)
        with _prometheus_lock:
            sets = _prometheus_sets.setdefault(registry, {})
            shared = sets.get(namespace)
            if shared is None:
                shared = _PrometheusSet(client, registry, namespace, bounds, max_sites, max_loops)
                sets[namespace] = shared
        if shared.settings != (bounds, max_sites, max_loops):
            raise ValueError(
                f"another PrometheusSink already made the {namespace!r} metrics in this "
                f"registry with buckets={shared.settings[0]}, max_sites={shared.settings[1]}, "
                f"max_loops={shared.settings[2]}: pass the same values, or another namespace"
            )
        self._shared = shared
        self._set = shared
        self.registry = registry
        self.namespace = namespace

    def block(self, block: Block) -> None:
        shared = self._set
        site = shared.sites(block.site or UNKNOWN_SITE)
        route = shared.routes(block.request or "")
        shared.blocks.labels(site=site, kind=block.kind, route=route).inc()

    def stall(self, stall: Stall) -> None:
        shared = self._set
        shared.stalls.labels(loop=shared.loops(stall.loop), cause=stall.cause).inc()

    def slow_iteration(self, loop: str, duration: float, site: str | None, blocked: bool) -> None:
        shared = self._set
        shared.histogram.labels(loop=shared.loops(loop)).observe(duration)


# -- OpenTelemetry -------------------------------------------------------------

_otel_lock = threading.Lock()
_otel_sets: weakref.WeakKeyDictionary[Any, _OtelSet] = weakref.WeakKeyDictionary()


class _OtelSet(_Shared):
    def __init__(
        self, api: Any, meter: Any, buckets: tuple[float, ...], max_sites: int, max_loops: int
    ) -> None:
        super().__init__((buckets, max_sites, max_loops), max_sites, max_loops)
        self._observation = api.Observation
        try:
            self.histogram = meter.create_histogram(
                "loopwatch.iteration.busy", unit="s", description=_HISTOGRAM_DOC,
                explicit_bucket_boundaries_advisory=buckets,
            )
        except TypeError:
            # opentelemetry-api before 1.30 takes no bucket advice: a View sets them there.
            self.histogram = meter.create_histogram(
                "loopwatch.iteration.busy", unit="s", description=_HISTOGRAM_DOC
            )
        self.blocks = meter.create_counter(
            "loopwatch.blocks", unit="{block}", description=_BLOCKS_DOC
        )
        self.stalls = meter.create_counter(
            "loopwatch.stalls", unit="{stall}", description=_STALLS_DOC
        )
        meter.create_observable_gauge(
            "loopwatch.loop.busy_ratio", callbacks=[self._observe_busy], unit="1",
            description=_BUSY_DOC,
        )
        meter.create_observable_gauge(
            "loopwatch.loop.lag.p99", callbacks=[self._observe_lag], unit="s",
            description=_LAG_DOC,
        )

    def _observe(self, which: int) -> Iterable[Any]:
        try:
            values = self.loop_values()
        except Exception:
            log_once("metrics-otel-collect", "loopwatch could not read loop statistics")
            return []
        return [
            self._observation(pair[which], {"loop": loop})
            for loop, pair in sorted(values.items())
            if pair[which] is not None
        ]

    def _observe_busy(self, options: Any) -> Iterable[Any]:
        return self._observe(0)

    def _observe_lag(self, options: Any) -> Iterable[Any]:
        return self._observe(1)


class OpenTelemetrySink(_SharedSink):
    """Export what a session finds as OpenTelemetry metrics (needs ``loopwatch[otel]``).

    Instruments, on the meter ``loopwatch`` of ``meter_provider`` (default: the
    global one):

    - ``loopwatch.iteration.busy`` (histogram, ``s``, attribute ``loop``): busy
      time of iterations slower than the session's ``site_threshold``
      (threshold / 10, at least 2 ms), blocks included; faster iterations are
      not timed one by one, so they are not in it. Bucket bounds are given as
      advice (``buckets``), which opentelemetry 1.30 and later honour.
    - ``loopwatch.loop.busy_ratio`` (observable gauge, ``1``, ``loop``): busy
      share of the latest complete 1-second window, read at collection time.
    - ``loopwatch.loop.lag.p99`` (observable gauge, ``s``, ``loop``): heartbeat lag p99.
    - ``loopwatch.blocks`` (counter, attributes ``site``, ``kind`` and ``route``).
    - ``loopwatch.stalls`` (counter, attributes ``loop`` and ``cause``): stalls,
      iterations over the threshold the machine caused (not blocks).

    Exported to Prometheus these become ``loopwatch_iteration_busy_seconds``,
    ``loopwatch_loop_busy_ratio``, ``loopwatch_blocks_total`` and
    ``loopwatch_stalls_total``, as with
    :class:`PrometheusSink`. Attribute values are capped the same way
    (``max_loops``, ``max_sites``, then ``"other"``); sinks on the same meter
    provider share one set of instruments.

    >>> import asyncio, time, loopwatch
    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> reader = InMemoryMetricReader()  # in a service: an OTLP or Prometheus reader
    >>> sink = OpenTelemetrySink(MeterProvider(metric_readers=[reader]))
    >>> async def main():
    ...     time.sleep(0.2)  # blocks the loop
    >>> with loopwatch.watch(threshold=0.1, sinks=[sink]):
    ...     asyncio.run(main())
    >>> [(m.name, m.data.data_points[0].value)
    ...  for rm in reader.get_metrics_data().resource_metrics
    ...  for sm in rm.scope_metrics for m in sm.metrics if m.name == "loopwatch.blocks"]
    [('loopwatch.blocks', 1)]
    """

    def __init__(
        self,
        meter_provider: Any = None,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_sites: int = 100,
        max_loops: int = 20,
    ) -> None:
        super().__init__()
        api = _require("opentelemetry.metrics", "otel", "OpenTelemetrySink")
        if meter_provider is None:
            meter_provider = api.get_meter_provider()
        elif not hasattr(meter_provider, "get_meter"):
            raise TypeError(
                f"invalid meter_provider {meter_provider!r}: expected an OpenTelemetry "
                "MeterProvider, or None for the global one"
            )
        bounds = _check_buckets(buckets)
        max_sites = _check_cap("max_sites", max_sites)
        max_loops = _check_cap("max_loops", max_loops)
        from loopwatch import __version__

        with _otel_lock:
            shared = _otel_sets.get(meter_provider)
            if shared is None:
                meter = meter_provider.get_meter("loopwatch", __version__)
                shared = _OtelSet(api, meter, bounds, max_sites, max_loops)
                _otel_sets[meter_provider] = shared
        if shared.settings != (bounds, max_sites, max_loops):
            raise ValueError(
                "another OpenTelemetrySink already made loopwatch's instruments on this "
                f"meter provider with buckets={shared.settings[0]}, "
                f"max_sites={shared.settings[1]}, max_loops={shared.settings[2]}: "
                "pass the same values"
            )
        self._shared = shared
        self._set = shared
        self.meter_provider = meter_provider

    def block(self, block: Block) -> None:
        shared = self._set
        site = shared.sites(block.site or UNKNOWN_SITE)
        route = shared.routes(block.request or "")
        shared.blocks.add(1, {"site": site, "kind": block.kind, "route": route})

    def stall(self, stall: Stall) -> None:
        shared = self._set
        shared.stalls.add(1, {"loop": shared.loops(stall.loop), "cause": stall.cause})

    def slow_iteration(self, loop: str, duration: float, site: str | None, blocked: bool) -> None:
        shared = self._set
        shared.histogram.record(duration, {"loop": shared.loops(loop)})
