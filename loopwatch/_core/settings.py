"""The watchdog's settings: every session's config merged into one.

One watchdog serves every session, so it looks as often, samples as finely and
watches as widely as the most demanding one asks; each session then keeps
what is over its own threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loopwatch.config import Config


@dataclass(frozen=True)
class Settings:
    """What the watchdog does for all its sessions at once: the most any of them asks for."""

    threshold: float
    site_threshold: float
    sample_interval: float
    deadman: bool
    precise: bool
    profile: bool
    profile_duty: float
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    @property
    def tick(self) -> float:
        # Each wake-up costs a busy loop a round trip of the GIL, and a quiet
        # process tens of microseconds of CPU: as few as will do. Looks 0.8 x the
        # threshold apart, with sampling from a tenth of it, give every iteration
        # longer than 0.9 x the threshold a sampled look while it runs (a look
        # at a younger one is followed by another within 0.8 x the threshold),
        # with a tenth of the threshold to spare for a late wake-up. The deadman
        # switch is re-armed every tick and must not fire between two of them.
        return self.threshold / 2 if self.deadman else self.threshold * 0.8

    @property
    def contended_tick(self) -> float:
        # While the watchdog wakes late (other threads hold the GIL), ticks farther
        # apart than this can all land after a block has ended.
        return min(self.tick, self.threshold / 2)

    @property
    def heartbeat(self) -> float:
        # a heartbeat loop's durations are good to one heartbeat: keep it short
        return self.threshold / 10

    @property
    def speculate(self) -> float:
        # Sampling (and the hook that stamps the end) starts well before the
        # threshold is crossed, so that a block that ends just past it has been
        # seen (see tick).
        return self.threshold / 4 if self.deadman else self.threshold / 10

    @property
    def deadman_timeout(self) -> float:
        # re-armed every tick (threshold / 2 with the deadman): fires only when the
        # watchdog is stuck
        return max(self.threshold * 0.9, 0.01)


def merge(configs: Sequence[Config]) -> Settings:
    """The settings that serve all of ``configs`` (at least one).

    >>> merge([Config(threshold=0.1), Config(threshold=0.05, deadman=True)]).threshold
    0.05
    """
    return Settings(
        threshold=min(c.threshold for c in configs),
        site_threshold=min(c.effective_site_threshold for c in configs),
        sample_interval=min(c.sample_interval for c in configs),
        deadman=any(c.deadman for c in configs),
        precise=any(c.precise for c in configs),
        profile=any(c.profile for c in configs),
        profile_duty=max((c.profile_duty for c in configs if c.profile), default=1.0),
        include=tuple(sorted({p for c in configs for p in c.include})),
        exclude=tuple(sorted({p for c in configs for p in c.exclude})),
    )
