"""Stack capture for the sampler, user-code selection, and faulthandler dump parsing.

The sampler runs while the watched loop is blocked, so capture is kept to a
hand-written frame walk that stores ``(code, lineno)`` pairs; turning them into
:class:`~loopwatch.model.Frame` objects happens once, when a block is finished.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
import sysconfig
from collections.abc import Sequence
from types import CodeType, FrameType

from loopwatch.model import Frame

RawStack = tuple[tuple[CodeType, int], ...]
"""(code, line) pairs, innermost last."""


def capture(frame: FrameType | None) -> RawStack:
    """Walk a frame chain outward and return it innermost last."""
    out = []
    while frame is not None:
        out.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    out.reverse()
    return tuple(out)


_OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DEMO = _OWN + "demo.py"

#: The console-script launcher of ``loopwatch run`` (``.../bin/loopwatch``).
_LAUNCHER = os.path.join(sysconfig.get_paths().get("scripts", ""), "loopwatch")

#: runpy, through which ``loopwatch run`` (and ``python -m``) start the program.
_RUNPY = ("<frozen runpy>", os.path.join(sysconfig.get_paths().get("stdlib", ""), "runpy.py"))


def _own(filename: str) -> bool:
    """loopwatch's own frames: its package (but for the demo), its launcher, runpy."""
    if filename.startswith(_OWN):
        return filename != _DEMO
    return filename in _RUNPY or filename == _LAUNCHER


def to_frames(raw: RawStack) -> tuple[Frame, ...]:
    """Frames, innermost last, without loopwatch's own.

    A sample can land inside loopwatch (its garbage-collection callback runs
    in whatever thread collects), and loopwatch's wrappers sit in the stack
    (the patched ``run_forever``, ``loopwatch run`` with its console-script
    launcher and runpy, an inline ``offload``): none of that is what the
    program was doing.
    """
    return tuple(
        Frame(code.co_filename, line or 0, code.co_name)
        for code, line in raw
        if not _own(code.co_filename)
    )


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    # "scripts": the installed tools' launchers (bin/uvicorn, bin/loopwatch) are no
    # more the program's code than the packages they start
    roots = {
        paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")
        if key in paths
    }
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    resolved = set()
    for root in roots:
        resolved.add(os.path.normcase(os.path.abspath(root)))
        resolved.add(os.path.normcase(os.path.realpath(root)))
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in resolved))


#: Files whose verdict is remembered; beyond this the memory starts afresh.
_CACHE_LIMIT = 4096


class UserCode:
    """Decides which files are the user's code (not the stdlib, site-packages or loopwatch).

    ``include`` patterns win over everything; ``exclude`` patterns win over the
    default. Patterns are matched with fnmatch against the absolute path and
    the path as recorded in the code object.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = tuple(include)
        self._exclude = tuple(exclude)
        self._roots = _library_roots()
        self._own = os.path.normcase(os.path.dirname(os.path.abspath(__file__))) + os.sep
        self._cache: dict[str, bool] = {}

    def __call__(self, filename: str) -> bool:
        known = self._cache.get(filename)
        if known is not None:
            return known
        verdict = self._decide(filename)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # code compiled under ever new names: stay bounded
        self._cache[filename] = verdict
        return verdict

    def _decide(self, filename: str) -> bool:
        absolute = os.path.normcase(os.path.abspath(filename))
        names = (filename, absolute)
        if any(fnmatch.fnmatch(n, p) for p in self._include for n in names):
            return True
        if any(fnmatch.fnmatch(n, p) for p in self._exclude for n in names):
            return False
        if filename.startswith("<"):
            # <frozen ...> modules are the stdlib; <string>/<stdin> are the user's
            return not filename.startswith("<frozen")
        if absolute.startswith(self._own):
            # loopwatch itself is never the culprit, but its demo plays a user's program
            return os.path.basename(absolute) == "demo.py"
        if _own(filename):
            return False
        return not absolute.startswith(self._roots)

    def site_index(self, frames: Sequence[Frame]) -> int | None:
        """Index of the innermost user frame that the loop is running, or None.

        Only frames inside the loop's iteration count: the user's frames
        around ``asyncio.run(...)`` are where the loop was started, not what
        blocked it, so a sample taken while the loop was busy in its own
        machinery has no site.
        """
        inside = _iteration_begins(frames)
        for index in range(len(frames) - 1, inside - 1, -1):
            if self(frames[index].file):
                return index
        return None


_ASYNCIO_BASE = os.sep + os.path.join("asyncio", "base_events.py")


def _iteration_begins(frames: Sequence[Frame]) -> int:
    """Index just inside the innermost asyncio ``_run_once`` frame (0 if there is none)."""
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if frame.function == "_run_once" and frame.file.endswith(_ASYNCIO_BASE):
            return index + 1
    return 0


# faulthandler writes, for each thread:
#   Thread 0x00007f3a1b2c3740 (most recent call first):
#     File "/app/x.py", line 12 in handler
# Python 3.14 names the thread after its id: ``Thread 0x7f.. [MainThread] (most recent ...``.
_THREAD_RE = re.compile(
    r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[.*\])? \(most recent call first\):"
)
_FRAME_RE = re.compile(r'^\s+File "(.*)", line (\d+|\?\?\?) in (.*)$')


def parse_faulthandler(text: str) -> dict[int, tuple[Frame, ...]]:
    """Parse a faulthandler traceback dump into thread id -> frames (innermost last)."""
    threads: dict[int, list[Frame]] = {}
    current: list[Frame] | None = None
    for line in text.splitlines():
        header = _THREAD_RE.match(line)
        if header:
            current = threads.setdefault(int(header.group(1), 16), [])
            continue
        frame = _FRAME_RE.match(line)
        if frame and current is not None:
            lineno = int(frame.group(2)) if frame.group(2).isdigit() else 0
            current.append(Frame(frame.group(1), lineno, frame.group(3).strip()))
        elif not line.strip():
            current = None
    return {tid: tuple(reversed(frames)) for tid, frames in threads.items() if frames}

