"""The plugin's settings: resolved once per run, and the marker's per test."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import pytest

from loopwatch._pytest.known import AllowList
from loopwatch.config import ConfigError, by_precedence, parse_bool, parse_seconds

if TYPE_CHECKING:
    from loopwatch.config import Config

PytestMode = Literal["fail", "warn", "report"]
MODES: tuple[str, ...] = get_args(PytestMode)
DEFAULT_THRESHOLD = 0.1


class SettingsError(ConfigError):
    """Raised when a loopwatch pytest setting has a value it cannot use."""


@dataclass(frozen=True)
class Settings:
    """The plugin's settings for one run, resolved once (see :func:`resolve_settings`)."""

    enabled: bool = False
    threshold: float = DEFAULT_THRESHOLD
    mode: PytestMode = "fail"
    json_path: str | None = None
    strict: bool = False
    """Every blocking call on a loop's thread is a finding, however short."""
    baseline: str | None = None
    """A file of known findings: only others fail."""
    update_baseline: bool = False
    """Write the run's findings to ``baseline`` instead of judging them."""
    count_gc: bool = False
    """Garbage-collection pauses (blocks of kind ``gc``) count against their test."""
    allow: tuple[str, ...] = ()
    """ini ``loopwatch_allow``: where blocking is accepted (see :class:`AllowList`)."""
    sources: tuple[tuple[str, str], ...] = ()
    """(setting, where its value came from), for the report header."""

    def source(self, name: str) -> str:
        return dict(self.sources).get(name, "default")


#: name -> (command line option, environment variable, ini key)
NAMES: dict[str, tuple[str, str, str]] = {
    "enabled": ("--loopwatch", "LOOPWATCH_PYTEST", "loopwatch"),
    # The same variable as the core's threshold: it means the same thing everywhere.
    "threshold": ("--loopwatch-threshold", "LOOPWATCH_THRESHOLD", "loopwatch_threshold"),
    # Not LOOPWATCH_MODE: the core's mode (report|log|raise) is a different setting.
    "mode": ("--loopwatch-mode", "LOOPWATCH_PYTEST_MODE", "loopwatch_mode"),
    "json_path": ("--loopwatch-json", "LOOPWATCH_PYTEST_JSON", "loopwatch_json"),
    "strict": ("--loopwatch-strict", "LOOPWATCH_PYTEST_STRICT", "loopwatch_strict"),
    "baseline": ("--loopwatch-baseline", "LOOPWATCH_PYTEST_BASELINE", "loopwatch_baseline"),
    "count_gc": ("--loopwatch-count-gc", "LOOPWATCH_PYTEST_COUNT_GC", "loopwatch_count_gc"),
}

#: Command-line switches that mean "watch" on their own (nobody asks for strict mode,
#: or for a baseline to be written, without wanting the plugin on).
IMPLY_ENABLED = ("strict", "update_baseline")


def parse_threshold(raw: Any, source: str) -> float:
    return parse_seconds(raw, "threshold", source, SettingsError)


def _parse(name: str, raw: Any, source: str) -> Any:
    if name in ("enabled", "strict", "count_gc"):
        return parse_bool(raw, name, source, SettingsError)
    if name == "threshold":
        return parse_threshold(raw, source)
    if name == "mode":
        mode = str(raw).strip().lower()
        if mode not in MODES:
            raise SettingsError("mode", raw, source, f"expected one of {', '.join(MODES)}")
        return mode
    path = str(raw).strip()
    return path or None


def resolve_settings(
    *,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings by precedence: command line > environment > ini > default.

    ``cli`` and ``ini`` are keyed by setting name (``enabled``, ``threshold``,
    ``mode``, ``json_path``, ``strict``, ``baseline``, ``count_gc``; the command line also
    ``update_baseline``, the ini file also ``allow``, a list of patterns);
    ``None`` or ``""`` means not set. ``env`` is the process environment.
    ``--loopwatch-strict`` and ``--loopwatch-update-baseline`` switch the
    plugin on unless something says off. Raises
    :class:`~loopwatch.config.ConfigError` naming the setting, the value and
    where it came from.

    >>> resolve_settings(cli={"threshold": "0.2"}, env={"LOOPWATCH_THRESHOLD": "0.3"}).threshold
    0.2
    """
    cli = cli or {}
    ini = ini or {}
    env = os.environ if env is None else env
    by_name = {name: env.get(variable) for name, (_, variable, _) in NAMES.items()}
    chosen = by_precedence(NAMES, [
        (cli, lambda name: f"command line option {NAMES[name][0]}"),
        (by_name, lambda name: f"environment variable {NAMES[name][1]}"),
        (ini, lambda name: f"ini option {NAMES[name][2]}"),
    ])
    values = {name: _parse(name, raw, source) for name, (raw, source) in chosen.items()}
    sources = dict((name, source) for name, (_, source) in chosen.items())
    values["update_baseline"] = bool(cli.get("update_baseline"))
    implied = [name for name in IMPLY_ENABLED if cli.get(name)]
    if "enabled" not in values and implied:
        values["enabled"] = True
        sources["enabled"] = f"implied by --loopwatch-{implied[0].replace('_', '-')}"
    if values["update_baseline"] and not values.get("baseline"):
        raise SettingsError(
            "baseline", "", "command line option --loopwatch-update-baseline",
            "it needs a file to write: --loopwatch-baseline PATH or ini loopwatch_baseline",
        )
    allow = tuple(ini.get("allow") or ())
    AllowList(allow)  # a bad pattern stops the run here, named with its source
    return Settings(**values, allow=allow, sources=tuple(sources.items()))


def threshold_option(text: str) -> float:
    """argparse type for --loopwatch-threshold: a bad value is a usage error naming the option."""
    import argparse

    try:
        return parse_threshold(text, "--loopwatch-threshold")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a number of seconds > 0, e.g. 0.1"
        )


# -- the marker ------------------------------------------------------------------


@dataclass(frozen=True)
class TestRules:
    """One test's threshold and whether its blocks are allowed (from its marker)."""

    __test__ = False  # not a test class, whatever its name

    threshold: float
    allow: bool
    strict: bool = False
    count_gc: bool = False
    """Its garbage-collection pauses count against it."""


MARKER_SIGNATURE = "loopwatch(threshold=None, allow=False, strict=None, count_gc=None)"


def _marker_signature(
    threshold: float | None = None,
    allow: bool = False,
    strict: bool | None = None,
    count_gc: bool | None = None,
) -> None:
    """The marker's signature (:data:`MARKER_SIGNATURE`)."""


def rules_for(
    item: pytest.Item, default: float, strict: bool = False, count_gc: bool = False
) -> TestRules:
    """The marker's settings for this test over the run's; SettingsError for a bad marker."""
    marker = item.get_closest_marker("loopwatch")
    if marker is None:
        return TestRules(default, False, strict, count_gc)
    source = f"@pytest.mark.loopwatch on {item.nodeid}"
    try:
        bound = inspect.signature(_marker_signature).bind(*marker.args, **marker.kwargs)
    except TypeError as error:
        raise SettingsError(
            "marker", f"{marker.args or ''}{marker.kwargs or ''}", source,
            f"{error}; expected {MARKER_SIGNATURE}",
        )
    threshold = bound.arguments.get("threshold")
    allow = bound.arguments.get("allow", False)
    marked_strict = bound.arguments.get("strict")
    marked_count_gc = bound.arguments.get("count_gc")
    for name, value in (("allow", allow), ("strict", marked_strict),
                        ("count_gc", marked_count_gc)):
        if not isinstance(value, bool) and not (name != "allow" and value is None):
            raise SettingsError(name, value, source, "expected True or False")
    strict = strict if marked_strict is None else marked_strict
    count_gc = count_gc if marked_count_gc is None else marked_count_gc
    if threshold is None:
        return TestRules(default, allow, strict, count_gc)
    if isinstance(threshold, str):
        raise SettingsError("threshold", threshold, source, "expected a number of seconds > 0")
    return TestRules(parse_threshold(threshold, source), allow, strict, count_gc)


def core_config(threshold: float, *, max_blocks: int = 1, strict: bool = False) -> Config:
    """The core Config for a plugin session; other LOOPWATCH_* core settings still apply.

    The plugin hears of each block through its session's listener and keeps
    what it needs itself: by default the session keeps one block, not a copy of all.
    """
    from loopwatch.config import Config

    # Keys the plugin decides itself, or that mean something else for the core.
    skip = {
        "LOOPWATCH_THRESHOLD", "LOOPWATCH_MODE", "LOOPWATCH_ON_BLOCK", "LOOPWATCH_MAX_BLOCKS",
        "LOOPWATCH_STRICT",
    }
    env = {k: v for k, v in os.environ.items() if k.startswith("LOOPWATCH_") and k not in skip}
    options: dict[str, Any] = {}
    if "LOOPWATCH_SAMPLE_INTERVAL" not in env:
        options["sample_interval"] = min(0.002, threshold / 4)
    try:
        return Config.resolve(
            env=env, threshold=threshold, mode="report", max_blocks=max_blocks, strict=strict,
            **options,
        )
    except ConfigError as error:
        raise pytest.UsageError(str(error))
