"""What a run found: blocks per test, per-site totals, verdicts; exported, and merged over xdist."""

from __future__ import annotations

from typing import Any

from loopwatch._pytest.windows import Seen
from loopwatch.model import Block, Site, SiteTable, blocked_total

#: How many blocks are kept in detail for one process; the rest are counted.
MAX_KEPT_BLOCKS = 10_000

#: The version of the plugin's JSON ("schema" in it).
SCHEMA = 1


def _seen_from(data: dict[str, Any]) -> Seen:
    return Seen(
        Block.from_dict(data), data.get("phase", "outside"), data.get("fixture"),
        data.get("fixture_action"),
    )


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
        self.dropped = 0
        self.events: list[str] = []
        self.errors: list[str] = []
        self._kept = 0
        self._sites = SiteTable()
        self._tests_at: dict[str, list[str]] = {}

    def count(self, seen: Seen, nodeid: str | None) -> bool:
        """Count a block in the sites; True if it is to be kept in detail too."""
        block = seen.block
        self._sites.add_block(block)
        if nodeid is not None:
            tests = self._tests_at.setdefault(block.site or "<unknown>", [])
            if nodeid not in tests:
                tests.append(nodeid)
        if self._kept >= MAX_KEPT_BLOCKS:
            self.dropped += 1
            return False
        self._kept += 1
        return True

    def add_outside(self, seen: Seen) -> None:
        if self.count(seen, None):
            self.outside.append(seen)

    def add_test(self, nodeid: str, seen: list[Seen]) -> None:
        """A test has ended; ``seen`` are its blocks kept in detail (counted already)."""
        self.tests_run += 1
        if seen:
            self.tests.setdefault(nodeid, []).extend(seen)

    # -- totals ------------------------------------------------------------------

    def sites(self) -> tuple[Site, ...]:
        return self._sites.freeze()

    def tests_at(self, site: str) -> list[str]:
        return self._tests_at.get(site, [])

    @property
    def blocks(self) -> int:
        """Blocks found, kept in detail or not."""
        return self._kept + self.dropped

    @property
    def blocked_total(self) -> float:
        return blocked_total(self.sites())

    @property
    def tests_with_blocks(self) -> int:
        return sum(1 for seen in self.tests.values() if seen)

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
        }

    def absorb(self, data: dict[str, Any]) -> None:
        """Merge an xdist worker's exported results into these."""
        for nodeid, seen in data.get("tests", {}).items():
            kept = [s for s in map(_seen_from, seen) if self.count(s, nodeid)]
            self.tests.setdefault(nodeid, []).extend(kept)
        for item in data.get("outside_tests", ()):
            self.add_outside(_seen_from(item))
        self.flagged.update(data.get("flagged", {}))
        self.tests_run += data.get("tests_run", 0)
        self.watched = self.watched or data.get("watched", False)
        # Blocks a worker did not keep in detail are not in its lists: count them here.
        self.dropped += data.get("dropped_blocks", 0)
        for message in data.get("events", ()):
            if message not in self.events:
                self.events.append(message)
        for message in data.get("errors", ()):
            if message not in self.errors:
                self.errors.append(message)
