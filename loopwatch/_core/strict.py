"""Strict mode: every blocking call made on a thread while it runs an event loop, however short.

Python raises an audit event (``sys.addaudithook``) for most calls that can
block: ``time.sleep``, ``open``, ``socket.connect``, ``subprocess.Popen``,
``sqlite3.connect``, ``os.listdir``... One hook, installed the first time a
session asks for strict mode, looks at the events in :data:`BLOCKING`; a call
is a finding when the calling thread is running an event loop right now
(``asyncio._get_running_loop()``, a thread-local read) and the call is not
asyncio's own (its sockets are non-blocking) or an import's. It is recorded,
with its stack, for every strict session: never raised, so a blocking call in
a callback cannot hang anything.

An audit hook cannot be removed. While no session is strict it returns at its
first test (one attribute read per audit event). Where Python raises no event
for a call (``os.stat``, a blocking socket's ``recv``, a lock or a queue that
has to wait: see :mod:`loopwatch._core.unaudited`) a thin wrapper reports it,
installed while a strict session runs and removed after.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from loopwatch._core.unaudited import Wrappers, blocking_socket
from loopwatch._log import log_once
from loopwatch.model import BlockingCall, Frame
from loopwatch.stacks import UserCode

#: audit event -> how the call is named in findings
BLOCKING: dict[str, str] = {
    "time.sleep": "time.sleep",
    "open": "open",
    "socket.connect": "socket.connect",
    "socket.getaddrinfo": "socket.getaddrinfo",
    "socket.gethostbyname": "socket.gethostbyname",
    "socket.gethostbyaddr": "socket.gethostbyaddr",
    "subprocess.Popen": "subprocess.Popen",
    "os.system": "os.system",
    "os.posix_spawn": "os.posix_spawn",
    "sqlite3.connect": "sqlite3.connect",
    "os.listdir": "os.listdir",
    "os.scandir": "os.scandir",
    "os.remove": "os.remove",
    "os.rename": "os.rename",
    "os.mkdir": "os.mkdir",
    "os.rmdir": "os.rmdir",
    "os.truncate": "os.truncate",
    "os.chmod": "os.chmod",
    "os.utime": "os.utime",
    "shutil.copyfile": "shutil.copyfile",
    "shutil.copytree": "shutil.copytree",
    "shutil.rmtree": "shutil.rmtree",
    "shutil.move": "shutil.move",
    "shutil.make_archive": "shutil.make_archive",
    "shutil.unpack_archive": "shutil.unpack_archive",
    "urllib.Request": "urllib.request.urlopen",
}

_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep
_SUBPROCESS = os.path.join(os.path.dirname(os.__file__), "subprocess.py")
#: how subprocess.Popen starts its child on some Pythons (3.13: os.posix_spawn)
_SPAWNS = frozenset({"os.posix_spawn", "os.system", "os.fork", "os.exec"})
#: (file, function) that waits on another thread by design, for an instant: Thread.start
#: waits for the new thread to say it runs
_BRIEF_WAITS = frozenset({(threading.__file__, "start")})
#: waits named after the function of the standard library (or a library) that waited
_WAITS = frozenset({"threading.Condition.wait", "threading.Thread.join"})
_LINECACHE = linecache.__file__
_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: frames looked at for a call's stack
_MAX_FRAMES = 64


def _detail(event: str, args: tuple[Any, ...]) -> str:
    """What an audited call was about: a path, an address, a command (short)."""
    if not args:
        return ""
    # socket.connect's arguments are (socket, address); every other event's first is it
    return _short(args[1] if event == "socket.connect" and len(args) > 1 else args[0])


def _short(about: Any) -> str:
    if isinstance(about, os.PathLike):
        about = os.fspath(about)
    if isinstance(about, bytes):
        about = os.fsdecode(about)
    text = about if isinstance(about, str) else repr(about)
    return text if len(text) <= 120 else text[:117] + "..."


def _in_memory(database: Any) -> bool:
    """An SQLite database with no file behind it: ":memory:", or a URI with mode=memory."""
    if not isinstance(database, str):
        return False
    return database == ":memory:" or (
        database.startswith("file:") and "mode=memory" in database
    )


def _api_name(frame: FrameType) -> str:
    """``module.Class.function`` of a frame, private modules left out (concurrent.futures)."""
    module = str(frame.f_globals.get("__name__", "?"))
    public = [part for part in module.split(".") if not part.startswith("_")] or [module]
    return ".".join([*public, frame.f_code.co_qualname])


class Strict:
    """The process's one audit hook, and the sessions that want its findings."""

    def __init__(self) -> None:
        self._installed = False
        self._lock = threading.Lock()
        #: strict sessions' receivers; read without the lock (a list is replaced, not changed)
        self._receivers: tuple[Callable[[BlockingCall], None], ...] = ()
        self._inside = threading.local()
        self._wrappers = Wrappers(self._wrapped_call)
        self.user_code = UserCode()

    def subscribe(self, receiver: Callable[[BlockingCall], None]) -> None:
        with self._lock:
            if not self._installed:
                sys.addaudithook(self._hook)
                self._installed = True
            if not self._receivers:
                self._wrappers.install()
            self._receivers = (*self._receivers, receiver)

    def unsubscribe(self, receiver: Callable[[BlockingCall], None]) -> None:
        with self._lock:
            self._receivers = tuple(r for r in self._receivers if r != receiver)
            if not self._receivers:
                self._wrappers.remove()

    @property
    def wrapped(self) -> bool:
        """Whether the wrappers for calls without audit events are in place."""
        return self._wrappers.installed

    @property
    def active(self) -> bool:
        return bool(self._receivers)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self._receivers:
            return  # strict mode off: the cost of every audit event in the process
        call = BLOCKING.get(event)
        if call is None or asyncio._get_running_loop() is None:
            return
        if event.startswith("socket.") and args and not blocking_socket(args[0]):
            return  # asyncio's own sockets (and any other non-blocking one)
        if event == "sqlite3.connect" and args and _in_memory(args[0]):
            return  # no file behind it
        self._record(call, _detail(event, args), spawn=event in _SPAWNS)

    def _wrapped_call(self, call: str, about: Any) -> None:
        """A wrapper's report (it has checked that a loop runs in this thread)."""
        if self._receivers:
            self._record(call, _short(about), spawn=False)

    def _record(self, call: str, detail: str, *, spawn: bool) -> None:
        if getattr(self._inside, "busy", False):
            return  # raised by loopwatch's own handling of a call
        self._inside.busy = True
        try:
            found = self._examine(call, detail, spawn)
            if found is not None:
                for receive in self._receivers:
                    receive(found)
        except Exception:
            log_once("strict-hook", "loopwatch's strict mode failed on a call; it carries on")
        finally:
            self._inside.busy = False

    def _examine(self, call: str, detail: str, spawn: bool) -> BlockingCall | None:
        first: FrameType | None = sys._getframe(3)  # in the blocking function, or its caller
        # A quick pass from the call outward to the program's own code: most calls that
        # are not findings are known there, before any Frame is built (asyncio's debug
        # mode has linecache stat source files on every call_soon).
        caller: FrameType | None = None  # the innermost frame that is not loopwatch's
        frame = first
        while frame is not None:
            filename = frame.f_code.co_filename
            if not filename.startswith(_OWN):
                if caller is None:
                    caller = frame
                    if filename == _LINECACHE:
                        return None  # source lines for a traceback
                if filename.startswith(_ASYNCIO):
                    return None  # asyncio calling for itself (its transports, its sockets)
                if spawn and filename == _SUBPROCESS:
                    return None  # subprocess.Popen starting its child: reported as that already
                if (filename, frame.f_code.co_name) in _BRIEF_WAITS and call in _WAITS:
                    return None
                if filename.startswith("<frozen importlib"):
                    return None  # reading a module to import it
                if self.user_code(filename):
                    break  # the program's own call
            frame = frame.f_back
        program = frame
        frames: list[Frame] = []
        frame = first
        while frame is not None and len(frames) < _MAX_FRAMES:
            filename = frame.f_code.co_filename
            if filename.startswith("<frozen importlib"):
                return None  # the program's code running as its module is imported
            if not filename.startswith(_OWN):
                frames.append(Frame(filename, frame.f_lineno, frame.f_code.co_name))
            frame = frame.f_back
        del frame
        frames.reverse()  # innermost last
        innermost = frames[-1] if frames else None
        index = self.user_code.site_index(tuple(frames))
        site = frames[index] if index is not None else innermost
        if call in _WAITS and caller is not None and caller is not program:
            # named after what the program called: queue.Queue.get, Future.result,
            # ThreadPoolExecutor.shutdown... rather than the wait inside it
            call = _api_name(caller)
        del caller, program
        task = asyncio.current_task()
        return BlockingCall(
            call=call,
            detail=detail,
            site=site.location if site is not None else None,
            function=site.function if site is not None else None,
            frames=tuple(frames),
            task=task.get_name() if task is not None else None,
            thread=threading.current_thread().name,
            at=time.time(),
            pid=os.getpid(),
        )


STRICT = Strict()
