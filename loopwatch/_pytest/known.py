"""Findings a suite has accepted: the allow-list (ini ``loopwatch_allow``) and the baseline.

A finding is a block over the threshold or, in strict mode, a blocking call.
Both are named by a :class:`Key`: the kind, the file and function of the line
of the program's code that blocked, and for a call what was called. No line
number: an edit elsewhere in the file does not make a known finding new. A
garbage-collection pause, when counted (``--loopwatch-count-gc``), is named by
``<garbage collection>`` and the generation collected; uncounted, it is never
one of the run's findings.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopwatch._format import short_path
from loopwatch.config import ConfigError
from loopwatch.model import GC_SITE, Block, BlockingCall, Frame

#: The version of the baseline file's format ("loopwatch_baseline" in it).
BASELINE_VERSION = 1


class KnownError(ConfigError):
    """An allow-list pattern or a baseline file loopwatch cannot use."""


@dataclass(frozen=True, order=True)
class Key:
    """What a baseline remembers of a finding."""

    kind: str  # "block" or "call"
    file: str  # relative to the rootdir, with "/"
    function: str
    call: str = ""  # for a blocking call: what was called

    def to_dict(self) -> dict[str, str]:
        data = {"kind": self.kind, "file": self.file, "function": self.function}
        if self.call:
            data["call"] = self.call
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Key:
        if not isinstance(data, dict) or data.get("kind") not in ("block", "call"):
            raise ValueError(f"not a finding: {data!r}")
        return cls(
            str(data["kind"]), str(data.get("file", "")), str(data.get("function", "")),
            str(data.get("call", "")),
        )

    def describe(self) -> str:
        what = self.call if self.kind == "call" else "a block"
        return f"{what} in {self.function} ({self.file})"


def key_of(finding: Block | BlockingCall, root: str) -> Key:
    site = finding.site
    if site == GC_SITE:
        # A collection has no line of its own (the line it interrupted is chance).
        return Key("block", GC_SITE, finding.function or "garbage collection")
    file = site.rpartition(":")[0] if site else ""
    where = short_path(file, root).replace(os.sep, "/") if file else "<unknown>"
    function = finding.function or "?"
    if isinstance(finding, BlockingCall):
        return Key("call", where, function, finding.call)
    return Key("block", where, function)


# -- the allow-list ------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    text: str
    path: str | None  # a glob on the file, relative to the rootdir
    modules: tuple[str, ...]  # file name endings a module.function pattern may mean
    function: str

    def matches(self, frame: Frame, relative: str) -> bool:
        if not fnmatch.fnmatchcase(frame.function, self.function):
            return False
        if self.path is not None:
            return fnmatch.fnmatchcase(relative, self.path)
        file = frame.file.replace(os.sep, "/")
        return any(file.endswith(ending) for ending in self.modules)


def _pattern(text: str) -> _Pattern:
    bad = KnownError(
        "allow", text, "ini option loopwatch_allow",
        "expected module.function or path/glob.py:function, one per line",
    )
    if not text or any(c.isspace() for c in text):
        raise bad
    if ":" in text or text.endswith(".py"):
        path, colon, function = text.partition(":")
        if not path.endswith(".py") or (colon and not function):
            raise bad
        return _Pattern(text, path, (), function or "*")
    module, _, function = text.rpartition(".")
    if not module or not function or any(not part for part in module.split(".")):
        raise bad
    # module.function, or module.Class.method: the class part is not in a frame's name
    endings: list[str] = []
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        stem = "/" + "/".join(parts[:cut])
        endings += [stem + ".py", stem + "/__init__.py"]
    return _Pattern(text, None, tuple(endings), function)


class AllowList:
    """Patterns of code where blocking is accepted: a finding is allowed when any
    frame of its stack matches one.

    ``module.function`` (``vendored.driver.*``, ``tests.helpers.make_fixture_file``)
    or ``path/glob.py:function`` (``tests/helpers/*.py:*``), relative to the rootdir;
    ``*`` and ``?`` are globs.

    >>> AllowList(["tests/helpers/*.py:*"]).allows([Frame("/r/tests/helpers/io.py", 3, "f")], "/r")
    'tests/helpers/*.py:*'
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = tuple(_pattern(text.strip()) for text in patterns if text.strip())

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def allows(self, frames: Iterable[Frame], root: str) -> str | None:
        """The first pattern that matches a frame of the stack, or None."""
        if not self._patterns:
            return None
        for frame in frames:
            relative = short_path(frame.file, root).replace(os.sep, "/")
            for pattern in self._patterns:
                if pattern.matches(frame, relative):
                    return pattern.text
        return None


# -- the baseline -------------------------------------------------------------------


def read_baseline(path: Path) -> frozenset[Key]:
    """The findings a baseline file holds; KnownError if it is missing or not one."""

    def bad(problem: str) -> KnownError:
        return KnownError("baseline", str(path), "--loopwatch-baseline", problem)

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise bad("no such file; write one with --loopwatch-update-baseline") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad(f"not readable as JSON: {error}") from None
    if not isinstance(data, dict) or data.get("loopwatch_baseline") != BASELINE_VERSION:
        raise bad(f'not a loopwatch baseline (expected "loopwatch_baseline": {BASELINE_VERSION})')
    try:
        return frozenset(Key.from_dict(item) for item in data.get("findings", ()))
    except (ValueError, KeyError, TypeError) as error:
        raise bad(str(error)) from None


def write_baseline(path: Path, keys: Iterable[Key]) -> None:
    """Write the findings sorted, one per line, so that a change shows as a small diff."""
    lines = [json.dumps(key.to_dict(), sort_keys=True) for key in sorted(set(keys))]
    body = ",\n".join("    " + line for line in lines)
    end = "\n" if lines else ""
    text = (
        f'{{\n  "loopwatch_baseline": {BASELINE_VERSION},\n  "findings": [\n{body}{end}  ]\n}}\n'
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
