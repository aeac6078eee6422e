"""Which test, phase and fixture each block belongs to.

A window opens at each boundary (a phase starting, a fixture's setup starting
or ending, a fixture finalized) and runs to the next one; its start is a
``time.monotonic()`` reading, the loop clock the core stamps blocks with. A
block belongs to the window in which its loop iteration ended, which is what
matters for loops that outlive one test (pytest-asyncio module and session
loop scopes, anyio's runner).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from loopwatch._pytest.settings import TestRules

if TYPE_CHECKING:
    from loopwatch.model import Block, BlockingCall
    from loopwatch.session import Session

Phase = Literal["setup", "call", "teardown", "outside"]

_PHASE_NAMES = {
    "setup": "test setup",
    "call": "the test",
    "teardown": "test teardown",
    "outside": "no test",
}


class _InWindow:
    """Where in the run a finding was made, and whether it counts (shared by both kinds)."""

    phase: Phase
    fixture: str | None
    fixture_action: str | None
    excuse: str | None

    @property
    def where(self) -> str:
        if self.fixture:
            return f"{self.fixture_action or self.phase} of fixture {self.fixture!r}"
        return _PHASE_NAMES[self.phase]

    def _placed(self, data: dict[str, Any]) -> dict[str, Any]:
        data.update(
            phase=self.phase, fixture=self.fixture, fixture_action=self.fixture_action,
            excuse=self.excuse,
        )
        return data


@dataclass(frozen=True)
class Seen(_InWindow):
    """A block and where in the run it happened."""

    block: Block
    phase: Phase
    fixture: str | None = None
    fixture_action: str | None = None
    excuse: str | None = None
    """Why it does not count against the test (the marker, an allow-list pattern, the baseline)."""

    def to_dict(self) -> dict[str, Any]:
        data = self.block.to_dict()
        data["loop_phase"] = data.pop("phase")  # "phase" is the test's here
        return self._placed(data)


@dataclass(frozen=True)
class SeenCall(_InWindow):
    """A blocking call (strict mode) and where in the run it happened."""

    call: BlockingCall
    phase: Phase
    fixture: str | None = None
    fixture_action: str | None = None
    excuse: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self._placed(self.call.to_dict())


Label = tuple[Phase, "str | None", "str | None"]
"""(test phase, fixture name, fixture action) of one window."""


@dataclass
class ItemState:
    """The test being run: its rules, its windows and the blocks seen so far.

    Marking a boundary costs a clock read; the watchdog is only flushed when
    the blocks are needed.
    """

    nodeid: str
    rules: TestRules
    phase: Phase = "setup"
    fixtures: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    calls: list[SeenCall] = field(default_factory=list)
    extra: Session | None = None
    reported_in_longrepr: set[str] = field(default_factory=set)
    sectioned: set[str] = field(default_factory=set)

    def mark(self) -> None:
        """Open a window labelled with the current phase and fixture, from now."""
        fixture = self.fixtures[-1] if self.fixtures else None
        self.starts.append(time.monotonic())
        self.labels.append((self.phase, fixture, "setup" if fixture else None))

    def label_at(self, end: float) -> Label | None:
        """The label of the window in which a block that ended at ``end`` ended."""
        index = bisect.bisect_right(self.starts, end) - 1
        return self.labels[index] if index >= 0 else None

    def finalized(self, fixture: str) -> None:
        """A fixture's finalizers just ran: the window since the last boundary was theirs."""
        if self.labels:
            self.labels[-1] = (self.phase, fixture, "teardown")
            self.mark()

    def counted(self, phases: Iterable[str]) -> list[Seen]:
        """The blocks in these phases that count against the test."""
        wanted = set(phases)
        limit = self.rules.threshold
        return [
            s for s in self.seen
            if s.phase in wanted and s.block.duration > limit and s.excuse is None
        ]

    def counted_calls(self, phases: Iterable[str]) -> list[SeenCall]:
        """The blocking calls (strict mode) in these phases that count against the test."""
        wanted = set(phases)
        return [s for s in self.calls if s.phase in wanted and s.excuse is None]
