"""What a run found: blocks per test, per-site totals, verdicts; exported, and merged over xdist."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loopwatch._pytest.known import Key
from loopwatch._pytest.windows import Seen, SeenCall
from loopwatch.model import Block, BlockingCall, Site, SiteTable, blocked_total

#: How many blocks are kept in detail for one process; the rest are counted.
MAX_KEPT_BLOCKS = 10_000

#: The version of the plugin's JSON ("schema" in it).
SCHEMA = 1


def _seen_from(data: dict[str, Any]) -> Seen:
    return Seen(
        Block.from_dict(dict(data, phase=data.get("loop_phase", "running"))),
        data.get("phase", "outside"), data.get("fixture"),
        data.get("fixture_action"), data.get("excuse"),
    )


def _seen_call_from(data: dict[str, Any]) -> SeenCall:
    return SeenCall(
        BlockingCall.from_dict(data), data.get("phase", "outside"), data.get("fixture"),
        data.get("fixture_action"), data.get("excuse"),
    )


@dataclass
class _Budget:
    """How many findings of one kind are kept in detail; past that they are only counted."""

    limit: int
    taken: int = 0
    dropped: int = 0

    def take(self) -> bool:
        if self.taken >= self.limit:
            self.dropped += 1
            return False
        self.taken += 1
        return True


@dataclass
class CallSite:
    """One blocking call at one line (strict mode), over the run."""

    call: str
    site: str | None
    function: str | None
    count: int = 0
    counted: int = 0
    """How many of ``count`` counted against their test (not allowed, not in the baseline)."""
    tests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "call": self.call, "site": self.site, "function": self.function,
            "count": self.count, "counted": self.counted, "tests": list(self.tests),
        }


class Results:
    """Everything the plugin records in one process (or, in the xdist controller, the run).

    Every block counts in the sites (the model's :class:`~loopwatch.model.SiteTable`);
    the first :data:`MAX_KEPT_BLOCKS` are also kept in detail, per test.
    """

    def __init__(self, threshold: float, mode: str) -> None:
        self.threshold = threshold
        self.mode = mode
        self.tests: dict[str, list[Seen]] = {}
        self.outside: list[Seen] = []
        self.flagged: dict[str, str] = {}
        self.tests_run = 0
        self.watched = False
        self.events: list[str] = []
        self.errors: list[str] = []
        self._blocks_kept = _Budget(MAX_KEPT_BLOCKS)
        self._sites = SiteTable()
        self._tests_at: dict[str, list[str]] = {}
        #: strict mode
        self.strict = False
        self.calls: dict[str, list[SeenCall]] = {}
        self.outside_calls: list[SeenCall] = []
        self._calls_kept = _Budget(MAX_KEPT_BLOCKS)
        self._call_sites: dict[tuple[str, str | None], CallSite] = {}
        #: the baseline: the findings of this run (allowed ones left out), and the file's
        self.found: set[Key] = set()
        self.baseline: frozenset[Key] | None = None
        self.baseline_written: str | None = None

    def count(self, seen: Seen, nodeid: str | None) -> bool:
        """Count a block in the sites; True if it is to be kept in detail too."""
        block = seen.block
        self._sites.add_block(block)
        if nodeid is not None:
            tests = self._tests_at.setdefault(block.site or "<unknown>", [])
            if nodeid not in tests:
                tests.append(nodeid)
        return self._blocks_kept.take()

    def add_outside(self, seen: Seen) -> None:
        if self.count(seen, None):
            self.outside.append(seen)

    def count_call(self, seen: SeenCall, nodeid: str | None) -> bool:
        """Count a blocking call in the call sites; True if it is to be kept in detail too."""
        call = seen.call
        site = self._call_sites.get((call.call, call.site))
        if site is None:
            site = self._call_sites[(call.call, call.site)] = CallSite(
                call.call, call.site, call.function
            )
        site.count += 1
        site.counted += seen.excuse is None and nodeid is not None
        if nodeid is not None and nodeid not in site.tests:
            site.tests.append(nodeid)
        return self._calls_kept.take()

    def add_outside_call(self, seen: SeenCall) -> None:
        if self.count_call(seen, None):
            self.outside_calls.append(seen)

    def add_test(self, nodeid: str, seen: list[Seen], calls: Sequence[SeenCall] = ()) -> None:
        """A test has ended; ``seen`` and ``calls`` are its findings kept in detail (counted)."""
        self.tests_run += 1
        if seen:
            self.tests.setdefault(nodeid, []).extend(seen)
        if calls:
            self.calls.setdefault(nodeid, []).extend(calls)

    # -- totals ------------------------------------------------------------------

    def sites(self) -> tuple[Site, ...]:
        return self._sites.freeze()

    def tests_at(self, site: str) -> list[str]:
        return self._tests_at.get(site, [])

    @property
    def dropped(self) -> int:
        """Blocks counted but not kept in detail."""
        return self._blocks_kept.dropped

    @property
    def dropped_calls(self) -> int:
        """Blocking calls counted but not kept in detail."""
        return self._calls_kept.dropped

    @property
    def blocks(self) -> int:
        """Blocks found, kept in detail or not."""
        return self._blocks_kept.taken + self.dropped

    @property
    def blocked_total(self) -> float:
        return blocked_total(self.sites())

    @property
    def tests_with_blocks(self) -> int:
        return sum(1 for seen in self.tests.values() if seen)

    def call_sites(self) -> list[CallSite]:
        """Blocking calls per (call, line), most counted first."""
        return sorted(self._call_sites.values(), key=lambda s: (-s.counted, -s.count))

    @property
    def call_count(self) -> int:
        return sum(site.count for site in self._call_sites.values())

    @property
    def tests_with_calls(self) -> int:
        return sum(1 for calls in self.calls.values() if calls)

    def stale(self) -> list[Key]:
        """Baseline entries this run did not see (on a full run: fixed since)."""
        if self.baseline is None:
            return []
        return sorted(self.baseline - self.found)

    # -- export and merge ----------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The results as JSON data (what an xdist worker sends, and the JSON report)."""
        return {
            "schema": SCHEMA,
            "threshold": self.threshold,
            "mode": self.mode,
            "tests": {nodeid: [s.to_dict() for s in seen] for nodeid, seen in self.tests.items()},
            "outside_tests": [s.to_dict() for s in self.outside],
            "flagged": dict(self.flagged),
            "tests_run": self.tests_run,
            "watched": self.watched,
            "dropped_blocks": self.dropped,
            "events": list(dict.fromkeys(self.events)),
            "errors": list(self.errors),
            "sites": [
                dict(site.to_dict(), tests=self.tests_at(site.site)) for site in self.sites()
            ],
            "strict": self.strict,
            "calls": {nodeid: [c.to_dict() for c in calls] for nodeid, calls in self.calls.items()},
            "outside_tests_calls": [c.to_dict() for c in self.outside_calls],
            "dropped_calls": self.dropped_calls,
            "call_sites": [site.to_dict() for site in self.call_sites()],
            "found": [key.to_dict() for key in sorted(self.found)],
        }

    def absorb(self, data: dict[str, Any]) -> None:
        """Merge an xdist worker's exported results into these."""
        for nodeid, seen in data.get("tests", {}).items():
            kept = [s for s in map(_seen_from, seen) if self.count(s, nodeid)]
            self.tests.setdefault(nodeid, []).extend(kept)
        for item in data.get("outside_tests", ()):
            self.add_outside(_seen_from(item))
        # A worker counted every call in its call sites, kept in detail or not: merge those.
        for nodeid, calls in data.get("calls", {}).items():
            self.calls.setdefault(nodeid, []).extend(map(_seen_call_from, calls))
        self.outside_calls.extend(map(_seen_call_from, data.get("outside_tests_calls", ())))
        self._calls_kept.dropped += data.get("dropped_calls", 0)
        for item in data.get("call_sites", ()):
            site = self._call_sites.setdefault(
                (item["call"], item["site"]), CallSite(item["call"], item["site"], item["function"])
            )
            site.count += item["count"]
            site.counted += item["counted"]
            site.tests += [t for t in item["tests"] if t not in site.tests]
        self.strict = self.strict or data.get("strict", False)
        self.found.update(Key.from_dict(item) for item in data.get("found", ()))
        self.flagged.update(data.get("flagged", {}))
        self.tests_run += data.get("tests_run", 0)
        self.watched = self.watched or data.get("watched", False)
        # Blocks a worker did not keep in detail are not in its lists: count them here.
        self._blocks_kept.dropped += data.get("dropped_blocks", 0)
        for message in data.get("events", ()):
            if message not in self.events:
                self.events.append(message)
        for message in data.get("errors", ()):
            if message not in self.errors:
                self.errors.append(message)
