"""Configuration: one validated, immutable object shared by every entry surface.

The same field names are used for keyword arguments, CLI flags (``--threshold``),
environment variables (``LOOPWATCH_THRESHOLD``), the ``[tool.loopwatch]`` table
of the nearest ``pyproject.toml`` and pytest ini keys (``loopwatch_threshold``).
Values are validated once, here, and a bad value is reported with the field,
the value, where it came from and what is allowed.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from loopwatch.model import Block
    from loopwatch.sinks import Sink

Mode = Literal["report", "log", "raise"]
MODES: tuple[str, ...] = get_args(Mode)

ENV_PREFIX = "LOOPWATCH_"

#: Thousand-cuts attribution never goes below this: shorter iterations are normal.
MIN_SITE_THRESHOLD = 0.002


@dataclass(frozen=True)
class Config:
    """Settings for one watch session.

    >>> Config(threshold=0.05).threshold
    0.05
    """

    threshold: float = 0.1
    """A loop iteration busy longer than this many seconds is a block."""
    sample_interval: float = 0.002
    """Seconds between stack samples of a loop that is blocking."""
    site_threshold: float | None = None
    """Iterations longer than this are aggregated per site (default: threshold / 10, >= 2 ms)."""
    precise: bool = False
    """Also time each callback and task step (costs more per callback)."""
    profile: bool = False
    """Run yappi while watching, so blocks name the functions (C ones too) that ran."""
    profile_duty: float = 1.0
    """Share of each second yappi runs in profile mode (below 1 bounds its cost)."""
    include: tuple[str, ...] = ()
    """fnmatch patterns of files that count as user code even if installed."""
    exclude: tuple[str, ...] = ()
    """fnmatch patterns of files that never count as user code."""
    max_blocks: int = 1000
    """How many blocks a session keeps; older ones are dropped (sites keep counting)."""
    on_block: Callable[[Block], Any] | None = field(default=None, compare=False)
    """Called with each :class:`~loopwatch.Block` as it is found, in loopwatch's sinks
    thread (never the loop's nor the watchdog's: a slow callback stalls neither)."""
    sinks: tuple[Sink, ...] = field(default=(), compare=False)
    """:class:`~loopwatch.Sink` objects that receive blocks and slow iterations
    (e.g. ``loopwatch.metrics.PrometheusSink()``)."""
    mode: Mode = "report"
    """``report``: collect (each block is also logged at WARNING on ``loopwatch.blocks``,
    shown where the application configured logging); ``log``: as report, and show
    those warnings on stderr when nothing else configured logging; ``raise``:
    leaving watch() raises LoopBlockedError if the loop blocked."""
    deadman: bool = False
    """Also use faulthandler to capture stacks inside C calls that hold the GIL.

    Off by default, and for debugging sessions only: faulthandler reads other
    threads' stacks without the GIL, and when it fires while they run Python
    code (the watchdog was starved of CPU, or a tight loop kept it waiting) the
    read can crash the process. Without it, such blocks are still found, and
    their line comes from the first sample taken as the C call returns."""
    strict: bool = False
    """Also record every blocking call made on a thread while it runs an event loop,
    however short (``time.sleep``, ``open``, ``socket.connect``...): ``Report.calls``."""
    subprocesses: bool = False
    """Also watch the Python processes the program starts (multiprocessing and
    ProcessPoolExecutor workers, uvicorn/gunicorn workers): their blocks come into
    this session's report, each with its ``pid``. ``loopwatch run`` turns it on."""
    report_signal: str | None = None
    """A signal (``"SIGUSR1"``) that writes the report so far to ``report_file``
    while the session runs: ``kill -USR1 PID`` on a service that cannot be attached
    to. Needs ``watch()`` to start in the main thread."""
    report_file: str = "loopwatch-{pid}.json"
    """Where ``report_signal`` writes the report (``{pid}`` is the process id),
    relative to the process's current directory."""

    def __post_init__(self) -> None:
        _validate(self, source="argument")

    @property
    def effective_site_threshold(self) -> float:
        """The per-site aggregation threshold, resolved from its default."""
        if self.site_threshold is not None:
            return self.site_threshold
        return max(self.threshold / 10, MIN_SITE_THRESHOLD)

    @classmethod
    def resolve(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        ini: Mapping[str, Any] | None = None,
        project: str | os.PathLike[str] | Literal[False] | None = None,
        **kwargs: Any,
    ) -> Config:
        """Build a Config from, by precedence: kwargs > environment > the
        ``[tool.loopwatch]`` table of the nearest ``pyproject.toml`` > ini > defaults.

        ``project``: the folder to look for ``pyproject.toml`` from, upwards
        (default: the current directory); ``False``: do not look.

        >>> Config.resolve(env={"LOOPWATCH_THRESHOLD": "0.2"}, project=False).threshold
        0.2
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(
                f"unknown loopwatch option {unknown[0]!r}; "
                f"known options: {', '.join(sorted(names))}"
            )
        table, path = ({}, None) if project is False else pyproject_table(project)
        file_names = names - {"on_block", "sinks"}  # objects: not settable from a file
        for key in table:
            if key not in file_names:
                raise ConfigError(
                    key, table[key], f"[tool.loopwatch] in {path}",
                    f"not a loopwatch option; known: {', '.join(sorted(file_names))}",
                )
        chosen = by_precedence(names, [
            (kwargs, lambda name: "argument"),
            (_env_values(env, names), lambda name: f"environment variable {_env_name(name)}"),
            (table, lambda name: f"[tool.loopwatch] {name} in {path}"),
            (ini or {}, lambda name: f"ini option loopwatch_{name}"),
        ])
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, (raw, source) in chosen.items():
            # Arguments are Python values, checked by the Config itself; text from
            # the environment or an ini file is parsed first.
            values[name] = raw if source == "argument" else _parse(name, raw, source)
            sources[name] = source
        try:
            return cls(**values)
        except ConfigError as error:
            source = sources.get(error.name, "argument")
            if source == "argument":
                raise
            raise ConfigError(error.name, error.value, source) from None

    def with_changes(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


_PYPROJECT_CACHE: dict[str, tuple[int, dict[str, Any]]] = {}


def find_pyproject(start: str | os.PathLike[str] | None = None) -> str | None:
    """The nearest ``pyproject.toml`` from ``start`` (default: the current directory) up."""
    folder = os.path.abspath(start if start is not None else os.getcwd())
    while True:
        candidate = os.path.join(folder, "pyproject.toml")
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def pyproject_table(
    start: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The ``[tool.loopwatch]`` table of the nearest ``pyproject.toml``, and that file.

    A file that does not parse is an error only if it seems to have the table
    (a project's broken file is not loopwatch's business otherwise).
    """
    path = find_pyproject(start)
    if path is None:
        return {}, None
    try:
        stamp = os.stat(path).st_mtime_ns
        cached = _PYPROJECT_CACHE.get(path)
        if cached is not None and cached[0] == stamp:
            return dict(cached[1]), path
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}, None
    import tomllib

    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        if b"tool.loopwatch" not in raw:
            return {}, path
        raise ConfigError("pyproject", path, "the [tool.loopwatch] table", f"not TOML: {error}")
    table = document.get("tool", {}).get("loopwatch", {})
    if not isinstance(table, dict):
        raise ConfigError("pyproject", path, "the [tool.loopwatch] table", "expected a table")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    _PYPROJECT_CACHE[path] = (stamp, values)
    return dict(values), path


#: Where one layer of settings comes from: its values by setting name, and how to
#: name its source in an error message ("environment variable LOOPWATCH_MODE").
Layer = tuple[Mapping[str, Any], Callable[[str], str]]


def by_precedence(names: Iterable[str], layers: Sequence[Layer]) -> dict[str, tuple[Any, str]]:
    """For each setting, the raw value of the first layer that sets it, and its source.

    Layers come highest precedence first; ``None`` and ``""`` mean "not set
    here". Used by :meth:`Config.resolve` and the pytest plugin alike, so that
    both apply precedence (and name sources) the same way.

    >>> by_precedence(["mode"], [({"mode": None}, str.upper), ({"mode": "log"}, str.title)])
    {'mode': ('log', 'Mode')}
    """
    chosen: dict[str, tuple[Any, str]] = {}
    for name in names:
        for values, source in layers:
            raw = values.get(name)
            if raw is not None and raw != "":
                chosen[name] = (raw, source(name))
                break
    return chosen


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _env_values(env: Mapping[str, str] | None, names: set[str]) -> dict[str, str]:
    env = os.environ if env is None else env
    out = {}
    for name in names:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            out[name] = env[key]
    return out


#: How a yes or a no is written in an environment variable, ini file or option.
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
              "0": False, "false": False, "no": False, "off": False}


def parse_bool(
    raw: Any, name: str, source: str, error: type[ConfigError] | None = None
) -> bool:
    """A flag from ``raw`` (a bool, or one of :data:`BOOL_WORDS`), or ``error`` (a ConfigError)."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word not in BOOL_WORDS:
        raise (error or ConfigError)(name, raw, source, "expected true or false")
    return BOOL_WORDS[word]


def parse_seconds(
    raw: Any, name: str, source: str, error: type[ConfigError] | None = None
) -> float:
    """A positive, finite number of seconds from ``raw``, or ``error`` (a ConfigError)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not math.isfinite(value) or value <= 0:
        raise (error or ConfigError)(
            name, raw, source, "expected a number of seconds > 0, e.g. 0.1"
        )
    return value


def _parse(name: str, raw: Any, source: str) -> Any:
    """Turn a string from the environment, ini file or command line into the field's type."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if name in ("threshold", "sample_interval", "site_threshold", "profile_duty"):
            return float(text)
        if name == "max_blocks":
            return int(text)
        if name in ("precise", "profile", "deadman", "subprocesses", "strict"):
            return BOOL_WORDS[text.lower()]
        if name in ("include", "exclude"):
            return tuple(p.strip() for p in text.replace("\n", ",").split(",") if p.strip())
    except (ValueError, KeyError):
        raise ConfigError(name, raw, source)
    if name in ("on_block", "sinks"):
        raise ConfigError(name, raw, source)
    return text


_ALLOWED = {
    "threshold": "expected a number of seconds > 0, e.g. 0.1",
    "sample_interval": "expected a number of seconds > 0 and smaller than the threshold",
    "site_threshold": "expected a number of seconds > 0 and not above the threshold",
    "max_blocks": "expected a whole number >= 1",
    "profile_duty": "expected a share of time > 0 and <= 1, e.g. 0.2",
    "precise": "expected true or false",
    "profile": "expected true or false",
    "deadman": "expected true or false",
    "subprocesses": "expected true or false",
    "strict": "expected true or false",
    "include": "expected a list of fnmatch patterns",
    "exclude": "expected a list of fnmatch patterns",
    "mode": f"expected one of {', '.join(MODES)}",
    "report_signal": "expected a signal name a handler can take, e.g. SIGUSR1",
    "report_file": "expected a file name, e.g. loopwatch-{pid}.json",
    "on_block": "expected a callable taking a Block, or None",
    "sinks": "expected a list of loopwatch.Sink objects",
}


class ConfigError(ValueError):
    """Raised when a loopwatch setting has a value it cannot use.

    The message names the setting, the value, where it came from and what is
    allowed (``allowed``, or what is known to be allowed for that setting).
    """

    def __init__(self, name: str, value: Any, source: str, allowed: str | None = None) -> None:
        self.name, self.value, self.source = name, value, source
        allowed = allowed or _ALLOWED.get(name, "not a value loopwatch can use")
        super().__init__(f"invalid loopwatch {name} {value!r} from {source}: {allowed}")


def _bad(name: str, value: Any, source: str) -> ConfigError:
    return ConfigError(name, value, source)


def _seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _validate(config: Config, source: str) -> None:
    if not _seconds(config.threshold):
        raise _bad("threshold", config.threshold, source)
    if not _seconds(config.sample_interval) or config.sample_interval >= config.threshold:
        raise _bad("sample_interval", config.sample_interval, source)
    if config.site_threshold is not None and (
        not _seconds(config.site_threshold) or config.site_threshold > config.threshold
    ):
        raise _bad("site_threshold", config.site_threshold, source)
    if (
        not isinstance(config.max_blocks, int)
        or isinstance(config.max_blocks, bool)
        or config.max_blocks < 1
    ):
        raise _bad("max_blocks", config.max_blocks, source)
    if not _seconds(config.profile_duty) or config.profile_duty > 1:
        raise _bad("profile_duty", config.profile_duty, source)
    for flag in ("precise", "profile", "deadman", "subprocesses", "strict"):
        if not isinstance(getattr(config, flag), bool):
            raise _bad(flag, getattr(config, flag), source)
    for patterns in ("include", "exclude"):
        value = getattr(config, patterns)
        if isinstance(value, str):
            object.__setattr__(config, patterns, (value,))
        elif isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
            object.__setattr__(config, patterns, tuple(value))
        else:
            raise _bad(patterns, value, source)
    if config.mode not in MODES:
        raise _bad("mode", config.mode, source)
    if config.on_block is not None and not callable(config.on_block):
        raise _bad("on_block", config.on_block, source)
    if config.report_signal is not None:
        signum = signal_number(config.report_signal)
        if signum is None:
            raise _bad("report_signal", config.report_signal, source)
        object.__setattr__(config, "report_signal", signal.Signals(signum).name)
    if not isinstance(config.report_file, str) or not config.report_file.strip():
        raise _bad("report_file", config.report_file, source)
    _validate_sinks(config, source)


#: Signals that cannot be caught, or that a report must not take over.
_UNUSABLE_SIGNALS = frozenset({"SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL"})


def signal_number(name: object) -> int | None:
    """The number of a signal a handler can take: ``"SIGUSR1"``, ``"USR1"``, ``10``."""
    if isinstance(name, bool):
        return None
    if isinstance(name, int):
        try:
            name = signal.Signals(name).name
        except ValueError:
            return None
    if not isinstance(name, str):
        return None
    text = name.strip().upper()
    if text.isdigit():
        return signal_number(int(text))
    text = text if text.startswith("SIG") else "SIG" + text
    found = getattr(signal.Signals, text, None)
    if found is None or text in _UNUSABLE_SIGNALS:
        return None
    return int(found)


def _validate_sinks(config: Config, source: str) -> None:
    from loopwatch.sinks import Sink

    sinks = config.sinks
    if isinstance(sinks, Sink):
        sinks = (sinks,)
    if not isinstance(sinks, Sequence) or not all(isinstance(s, Sink) for s in sinks):
        raise _bad("sinks", config.sinks, source)
    object.__setattr__(config, "sinks", tuple(sinks))
