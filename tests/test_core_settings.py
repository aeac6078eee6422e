"""The watchdog's settings: sessions' configs merged, and the pace that follows from them."""

from __future__ import annotations

import pytest

from loopwatch import Config
from loopwatch._core.settings import merge


def test_one_watchdog_serves_the_most_demanding_session() -> None:
    """The smallest threshold and interval, any mode asked for, every pattern."""
    settings = merge([
        Config(threshold=0.1, include=("b/*",)),
        Config(threshold=0.05, sample_interval=0.001, deadman=True, exclude=("x/*",)),
        Config(threshold=0.2, profile=True, profile_duty=0.3, include=("a/*", "b/*")),
    ])
    assert settings.threshold == 0.05
    assert settings.sample_interval == 0.001
    assert settings.site_threshold == Config(threshold=0.05).effective_site_threshold
    assert (settings.deadman, settings.profile, settings.precise) == (True, True, False)
    assert settings.profile_duty == 0.3
    assert settings.include == ("a/*", "b/*")
    assert settings.exclude == ("x/*",)


def test_profile_duty_only_from_sessions_that_profile() -> None:
    """A session that does not profile does not lower another's duty cycle."""
    settings = merge([Config(profile_duty=0.1), Config(profile=True, profile_duty=0.5)])
    assert settings.profile_duty == 0.5
    assert merge([Config()]).profile_duty == 1.0


@pytest.mark.parametrize("threshold", [0.005, 0.05, 0.1, 0.5, 2.0])
def test_every_iteration_over_nine_tenths_of_the_threshold_gets_a_sampled_look(
    threshold: float,
) -> None:
    """Looks `tick` apart, sampling past `speculate`: the first look inside an iteration
    either samples it or comes within `speculate`, so the next one (one tick later)
    lands before 0.9 x threshold, leaving a tenth for a late wake-up."""
    for deadman in (False, True):
        settings = merge([Config(threshold=threshold, sample_interval=threshold / 10,
                                 deadman=deadman)])
        assert settings.tick + settings.speculate <= 0.9 * threshold + 1e-12
        assert settings.deadman_timeout > settings.tick  # not fired between two re-arms
