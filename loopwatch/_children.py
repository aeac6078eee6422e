"""Worker processes: watched through an environment variable and a startup hook.

The way coverage.py measures subprocesses. A session with ``subprocesses=True``
makes a folder and puts ``LOOPWATCH_CHILDREN`` (the folder and the session's
settings, as JSON) in the environment; every Python process started from then
on inherits it. The ``loopwatch-subprocesses.pth`` file that the package
installs runs at each interpreter's start-up and does nothing else unless the
variable is set; when it is, :func:`start` watches that process too (spawned
multiprocessing and ProcessPoolExecutor workers, uvicorn's and hypercorn's
workers, any ``python`` the program runs). A process forked from a watched one
(multiprocessing's fork and forkserver, gunicorn) carries on the parent's watch,
which turns into a child's at the fork (:func:`became_child`).

Each child appends its findings to ``<folder>/<pid>.jsonl`` as they come, one
JSON object a line: ``start``, then each ``block`` when it is found (with its
loop's statistics), a ``summary`` (its sites and loops so far) after it, from
the sinks thread, and each time one of its loops stops running, and ``end``
when it exits normally. Servers' workers often end by a signal (uvicorn re-raises the SIGTERM
it handled, from inside the loop), which skips every exit handler: their last
summary, and the blocks after it, are their report. A child killed on the spot
loses only what it had not written yet. The parent reads the folder when it
makes its report (:class:`Children`).

A variable set by mistake (not JSON, no such folder) does nothing at all.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from loopwatch._core.dispatch import DISPATCHER
from loopwatch._log import log_once
from loopwatch.model import (
    Block,
    LoopStats,
    Report,
    Site,
    Stall,
    aggregate_sites,
    merge_sites,
)

if TYPE_CHECKING:
    from loopwatch._core.findings import Found, Listener
    from loopwatch.config import Config


class Watched(Protocol):
    """What a child's writer needs of the session that watches the child."""

    _on_run_end: Callable[[], None] | None

    def stop(self) -> None: ...

    def running_loops(self) -> tuple[LoopStats, ...]: ...

    def report(self) -> Report: ...

    def forget_findings(self, listener: Listener) -> None: ...

ENV = "LOOPWATCH_CHILDREN"

#: Config fields a child takes from its parent (callbacks and sinks stay in the parent).
_PASSED_ON = ("threshold", "sample_interval", "site_threshold", "precise", "profile",
              "profile_duty", "include", "exclude", "deadman")


# -- in the parent -------------------------------------------------------------------


def announce(config: Config) -> tuple[str, str | None] | None:
    """Make the folder children write to and put it in the environment.

    Returns (folder, the variable's previous value) for :func:`withdraw`, or
    None when a watch of this process's own parent already set one up: this
    process's children then write where it writes.
    """
    if ENV in os.environ and _spec(os.environ[ENV]) is not None:
        return None
    _sweep_orphans()
    folder = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    settings = {name: getattr(config, name) for name in _PASSED_ON}
    settings["include"], settings["exclude"] = list(config.include), list(config.exclude)
    previous = os.environ.get(ENV)
    os.environ[ENV] = json.dumps({"dir": folder, "parent": os.getpid(), "config": settings})
    return folder, previous


_PREFIX = "loopwatch-children-"


def _sweep_orphans() -> None:
    """Remove the folders of watched processes that ended without removing theirs
    (killed: SIGKILL, the OOM killer), as their pid in the folder's name tells."""
    top = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(top) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_PREFIX):].partition("-")[0]
        path = os.path.join(top, name)
        if not pid.isdigit() or _running(int(pid)):
            continue
        try:
            mine = not hasattr(os, "getuid") or os.stat(path).st_uid == os.getuid()
        except OSError:
            continue
        if mine:
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process (by now, perhaps): not ours to signal
    return True


def withdraw(previous: str | None) -> None:
    """Processes started from now on are not watched."""
    if previous is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = previous


@dataclass
class ChildReport:
    """What one child process wrote."""

    pid: int
    argv: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    sites: tuple[Site, ...] | None = None
    """From its last summary; None if it never wrote one."""
    summarized: int = 0
    """How many of ``blocks`` the last summary's sites include."""
    loops: dict[str, LoopStats] = field(default_factory=dict)
    """By name: from the last summary, updated by the blocks written after it."""
    events: tuple[str, ...] = ()
    stalls: tuple[Stall, ...] = ()
    """From its last summary: long iterations the machine caused."""
    ended: bool = False
    """It exited normally and wrote its ``end``."""
    failed: str | None = None
    """Why it could not write its findings, if it could not."""

    def all_sites(self) -> tuple[Site, ...]:
        """Its sites, with the blocks found after its last summary counted in."""
        late = aggregate_sites(self.blocks[self.summarized:])
        return merge_sites([self.sites or (), late]) if late else self.sites or ()

    def alive(self) -> bool:
        return _running(self.pid)


class Children:
    """The parent's side: read what the children wrote, as often as a report is made."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._owner = os.getpid()

    def read(self) -> list[ChildReport]:
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return []
        by_pid: dict[int, ChildReport] = {}
        for name in names:
            pid, _, suffix = name.partition(".")
            if not pid.isdigit():
                continue
            path = os.path.join(self.folder, name)
            if suffix == "jsonl":
                read = _read_child(int(pid), path)
                known = by_pid.get(int(pid))
                read.failed = known.failed if known is not None else None
                by_pid[int(pid)] = read
            elif suffix == "failed":
                report = by_pid.setdefault(int(pid), ChildReport(int(pid)))
                report.failed = _read_text(path)
        return list(by_pid.values())

    def remove(self) -> None:
        """Delete the folder: in the parent only (a forked worker inherits this object, and
        its exit handlers run when it exits normally, as gunicorn's workers do)."""
        if os.getpid() == self._owner:
            shutil.rmtree(self.folder, ignore_errors=True)


def with_children(report: Report, children: list[ChildReport], max_blocks: int) -> Report:
    """The parent's report with its children's findings in: one report for the program.

    Blocks of all processes, the latest ``max_blocks`` kept; sites summed over
    processes (a child that did not finish counts its blocks); each child's
    loops, named with its pid; and which children reported.
    """
    if not children:
        return report
    blocks = sorted([*report.blocks, *(b for c in children for b in c.blocks)],
                    key=lambda b: b.started)
    kept = blocks[-max_blocks:]
    sites = merge_sites([report.sites, *(c.all_sites() for c in children)])
    events = list(report.events)
    watched = [c.pid for c in children]
    events.append(f"worker processes watched: {_pids(watched)}")
    for child in children:
        events.extend(f"pid {child.pid}: {event}" for event in child.events)
        if child.failed is not None:
            why = f" ({child.failed})" if child.failed else ""
            events.append(f"pid {child.pid} could not write its findings{why}: "
                          "what it found is missing from this report")
            continue
        if child.ended:
            continue
        if child.alive():
            events.append(f"pid {child.pid} was still running: its findings so far are in")
        else:
            events.append(
                f"pid {child.pid} ended without finishing its report (by a signal, as "
                "uvicorn's workers end, or killed): what it found up to its last block "
                "is in"
            )
    return replace(
        report,
        blocks=tuple(kept),
        dropped_blocks=report.dropped_blocks + len(blocks) - len(kept),
        sites=sites,
        loops=report.loops + tuple(stats for c in children for stats in c.loops.values()),
        events=tuple(dict.fromkeys(events)),
        stalls=tuple(sorted([*report.stalls, *(s for c in children for s in c.stalls)],
                            key=lambda s: s.started)[-max_blocks:]),
    )


def _pids(pids: list[int]) -> str:
    shown = ", ".join(f"pid {pid}" for pid in pids[:10])
    return shown + (f" and {len(pids) - 10} more" if len(pids) > 10 else "")


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as text:
            return text.read(500).strip()
    except OSError:
        return ""


def _read_child(pid: int, path: str) -> ChildReport:
    report = ChildReport(pid)
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the line being written when the child stopped
                _take(report, entry)
    except OSError:
        pass
    return report


def _take(report: ChildReport, entry: dict[str, Any]) -> None:
    kind = entry.get("kind")
    if kind == "start":
        report.argv = [str(a) for a in entry.get("argv", ())]
    elif kind == "block":
        report.blocks.append(_in_process(Block.from_dict(entry["block"]), report.pid))
        if "loop" in entry:  # its loop's statistics as the block was found
            stats = LoopStats.from_dict(entry["loop"])
            report.loops[_named(stats.loop, report.pid)] = replace(
                stats, loop=_named(stats.loop, report.pid)
            )
    elif kind in ("summary", "end"):
        report.ended = kind == "end"
        report.summarized = len(report.blocks)
        report.sites = tuple(Site.from_dict(s) for s in entry.get("sites", ()))
        report.loops = {
            _named(stats.loop, report.pid): replace(stats, loop=_named(stats.loop, report.pid))
            for stats in (LoopStats.from_dict(s) for s in entry.get("loops", ()))
        }
        report.events = tuple(str(e) for e in entry.get("events", ()))
        report.stalls = tuple(
            replace(stall, loop=_named(stall.loop, report.pid), pid=stall.pid or report.pid)
            for stall in (Stall.from_dict(s) for s in entry.get("stalls", ()))
        )


def _named(loop: str, pid: int) -> str:
    return f"{loop} [pid {pid}]"


def _in_process(block: Block, pid: int) -> Block:
    return replace(block, loop=_named(block.loop, pid), pid=block.pid or pid)


# -- in a child ----------------------------------------------------------------------

_child: _Writer | None = None
_lock = threading.Lock()


def _spec(raw: str) -> dict[str, Any] | None:
    try:
        spec = json.loads(raw)
        if isinstance(spec, dict) and os.path.isdir(spec["dir"]):
            return spec
    except (ValueError, KeyError, TypeError):
        pass
    return None


def start() -> None:
    """Watch this process for the parent named in the environment (the startup hook)."""
    try:
        spec = _spec(os.environ.get(ENV, ""))
        if spec is None or spec.get("parent") == os.getpid():
            return  # set by mistake, or this is the parent itself
        from loopwatch.config import Config
        from loopwatch.session import Session

        with _lock:
            global _child
            if _child is not None:
                return
            writer = _Writer(spec["dir"])
            options = dict(spec.get("config", {}), mode="report", subprocesses=True)
            config = Config.resolve(env={}, project=False, **options)  # as the parent has it
            session = Session(config, listener=writer.block, log_blocks=False)
            writer.attach(session)
            _child = writer
        session.start()
        atexit.register(writer.finish)
        _finish_in_multiprocessing(writer)
    except Exception:
        # A child must never fail for loopwatch's sake: it runs unwatched.
        log_once("child-start", "loopwatch could not watch this worker process")


def became_child(session: Watched) -> None:
    """In a forked child of a parent watching its subprocesses: write for the parent.

    The session carries on (the watchdog restarts with the child's first loop);
    what it had found belongs to the parent and is dropped; from now on it
    writes what it finds to the parent's folder.
    """
    spec = _spec(os.environ.get(ENV, ""))
    if spec is None:
        return
    global _child
    writer = _Writer(spec["dir"])
    session.forget_findings(writer.block)
    writer.attach(session)
    _child = writer
    atexit.register(writer.finish)
    _finish_in_multiprocessing(writer)


def _finish_in_multiprocessing(writer: _Writer) -> None:
    """multiprocessing's fork and forkserver children end with os._exit: no atexit.

    They do run multiprocessing's exit finalizers first; but a process it forks
    clears the finalizers it inherited before running its target, then runs its
    after-fork hooks: the finalizer is registered from one of those.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, writer.finish, exitpriority=100)
        util.register_after_fork(writer, _finish_in_multiprocessing)


class _Writer:
    """Appends a child's findings to its file, a line at a time (one write each)."""

    def __init__(self, folder: str) -> None:
        self.pid = os.getpid()
        self.session: Watched | None = None
        self._finished = False
        self._path = os.path.join(folder, f"{self.pid}.jsonl")
        #: opened with the first finding: helper processes that run no loop
        #: (multiprocessing's resource tracker, a forkserver) leave no file
        self._fd: int | None = None
        self._summary_due = False
        self._failed = False

    def _write(self, entry: dict[str, Any]) -> None:
        if self._finished:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._line({"kind": "start", "argv": list(sys.argv)})
            self._line(entry)
        except OSError as error:
            log_once("child-write", "loopwatch could not write this worker process's "
                     f"findings ({error.strerror or error}): its parent will say so",
                     exc_info=False)
            self._say_failed(error)

    def _say_failed(self, error: OSError) -> None:
        """Leave the parent a note that this child's findings are missing (once, if it can)."""
        if self._failed:
            return
        self._failed = True
        try:
            fd = os.open(self._path[: -len(".jsonl")] + ".failed", os.O_WRONLY | os.O_CREAT,
                         0o600)
        except OSError:
            return  # not even that: the parent cannot be told
        try:
            os.write(fd, (error.strerror or str(error)).encode())
        except OSError:
            pass  # the file's name says enough
        finally:
            os.close(fd)

    def _line(self, entry: dict[str, Any]) -> None:
        assert self._fd is not None
        os.write(self._fd, (json.dumps(entry) + "\n").encode())

    def attach(self, session: Watched) -> None:
        self.session = session
        session._on_run_end = self.summary

    def block(self, found: Found) -> None:
        """In the watchdog's thread: the block now, the summary soon, from the sinks thread.

        The block's loop statistics go with it: a worker that a signal ends
        before the summary (uvicorn's re-raise its SIGTERM) still has its loop.
        """
        entry: dict[str, Any] = {"kind": "block", "block": found.block.to_dict()}
        session = self.session
        if session is not None:
            for stats in session.running_loops():
                if stats.loop == found.block.loop:
                    entry["loop"] = stats.to_dict()
        self._write(entry)
        if not self._summary_due:
            self._summary_due = True
            DISPATCHER.submit(self, "worker process summary", self._summary_soon)

    def _summary_soon(self) -> None:
        self._summary_due = False  # blocks queued while this one is written get their own
        self.summary()

    def summary(self, kind: str = "summary") -> None:
        """Write the sites and loops so far."""
        session = self.session
        if session is None or self._finished:
            return
        report = session.report()
        if self._fd is None and not report.loops:
            return  # ran no loop: nothing to tell
        self._write({
            "kind": kind,
            "sites": [s.to_dict() for s in report.sites],
            "loops": [stats.to_dict() for stats in report.loops],
            "events": list(report.events),
            "stalls": [stall.to_dict() for stall in report.stalls],
        })

    def finish(self) -> None:
        """Stop watching and write the sites and loops: the parent sees the child finished."""
        if self._finished or os.getpid() != self.pid:
            return
        session = self.session
        try:
            if session is not None:
                session.stop()
                self.summary("end")
        except Exception:
            log_once("child-finish", "loopwatch could not finish a worker process's report")
        finally:
            self._finished = True  # nothing is written after this: the file is closed
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
