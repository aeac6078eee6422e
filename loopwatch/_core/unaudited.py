"""Blocking calls Python raises no audit event for, wrapped while strict mode is on.

Strict mode hears of most blocking calls from audit events. These raise none:
``time.sleep`` before 3.13, ``os.stat`` (what ``os.path.exists`` and
``Path.is_file`` call), ``os.fsync``, ``os.read``/``os.write`` on a regular
file, ``recv``/``send``/``accept`` on a blocking socket, and waits on another
thread: a contended lock, a ``threading.Condition`` (and so ``Event.wait``,
``queue.Queue.get``, ``concurrent.futures.Future.result``, a semaphore), a
``Thread.join``. Each gets a thin wrapper that reports the call when it will
block and the calling thread runs an event loop, then calls the original.

The wrappers are installed when the first strict session starts and removed
when the last one stops. Locks made while strict mode was on keep working after
it (they are the wrapper class, which then only passes calls on); a lock made
before it, or a function bound before it (``from os import stat``), is not seen.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
import time
from asyncio import _get_running_loop
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: (call name, what it was about: a path, an address...): strict mode decides whether
#: it is a finding, and shortens the second for the report
Report = Callable[[str, Any], None]

_SOCKET_CALLS = (
    "recv", "recv_into", "recvfrom", "recvfrom_into", "send", "sendall", "sendto", "accept",
    "sendfile",
)


@dataclass(frozen=True)
class _Patch:
    owner: Any
    name: str
    original: Any


def _peer(sock: Any) -> str:
    try:
        return str(sock.getpeername())
    except (OSError, AttributeError):
        return ""


def blocking_socket(sock: Any) -> bool:
    """Whether a call on ``sock`` can wait (asyncio's sockets are non-blocking: they cannot)."""
    try:
        return sock.gettimeout() != 0.0  # type: ignore[no-any-return]
    except Exception:
        return True


def _regular_file(fd: Any) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, TypeError, ValueError):
        return False


class _LockType(type):
    """``isinstance(lock, threading.Lock)`` holds for real locks and wrapped ones alike."""

    _real: type

    def __instancecheck__(cls, instance: Any) -> bool:
        return type.__instancecheck__(cls, instance) or isinstance(instance, cls._real)


def _lock_class(name: str, make: Callable[[], Any], report: Report) -> type:
    """A lock class that reports an acquire that has to wait, around ``make()``'s lock."""

    def __init__(self: Any) -> None:
        self._lock = make()

    def acquire(self: Any, blocking: bool = True, timeout: float = -1) -> bool:
        inner = self._lock
        if not blocking or _get_running_loop() is None:
            return inner.acquire(blocking, timeout)  # type: ignore[no-any-return]
        if inner.acquire(False):
            return True  # free: no wait, no finding
        report(f"threading.{name}.acquire", "held by another thread")
        return inner.acquire(True, timeout)  # type: ignore[no-any-return]

    def __enter__(self: Any) -> bool:
        return acquire(self)

    def __exit__(self: Any, *exc: object) -> None:
        self._lock.release()

    def release(self: Any) -> None:
        self._lock.release()

    def __getattr__(self: Any, attribute: str) -> Any:
        # locked(), _is_owned(), _release_save(), _at_fork_reinit()...: the real lock's
        return getattr(self._lock, attribute)

    def __repr__(self: Any) -> str:
        return repr(self._lock)

    namespace = {
        "__init__": __init__, "acquire": acquire, "__enter__": __enter__,
        "__exit__": __exit__, "release": release, "__getattr__": __getattr__,
        "__repr__": __repr__, "__slots__": ("_lock",), "__module__": "threading",
        "__doc__": f"threading.{name}, reporting waits on an event loop's thread (strict mode).",
    }
    cls = _LockType(name, (), namespace)
    cls._real = type(make())
    return cls


class Wrappers:
    """The wrappers of one strict period: installed once, removed once."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._patches: list[_Patch] = []

    @property
    def installed(self) -> bool:
        return bool(self._patches)

    def install(self) -> None:
        if self._patches:
            return
        report = self._report
        if sys.version_info < (3, 13):  # from 3.13 Python raises "time.sleep" itself
            self._wrap(time, "sleep", self._sleep)
        for name in ("stat", "lstat"):
            self._wrap(os, name, self._path_call(f"os.{name}"))
        for name in ("fsync", "fdatasync"):
            if hasattr(os, name):
                self._wrap(os, name, self._fd_call(f"os.{name}", regular_only=False))
        for name in ("read", "write"):
            self._wrap(os, name, self._fd_call(f"os.{name}", regular_only=True))
        for name in _SOCKET_CALLS:
            self._wrap(socket.socket, name, self._socket_call(f"socket.socket.{name}"))
        ssl = sys.modules.get("ssl")
        if ssl is not None:
            # SSLSocket.recv and recv_into call read, sendall calls send: one finding each
            for name in ("read", "write", "send"):
                self._wrap(ssl.SSLSocket, name, self._socket_call(f"ssl.SSLSocket.{name}"))
        self._wrap(threading, "Lock", _lock_class("Lock", threading.Lock, report))
        self._wrap(threading, "RLock", _lock_class("RLock", threading.RLock, report))
        self._wrap(threading.Condition, "wait", self._condition_wait)
        self._wrap(threading.Thread, "join", self._thread_join)

    def remove(self) -> None:
        for patch in reversed(self._patches):
            setattr(patch.owner, patch.name, patch.original)
        self._patches = []

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any] | type) -> None:
        original = getattr(owner, name)
        replacement = make if isinstance(make, type) else make(original)
        self._patches.append(_Patch(owner, name, original))
        setattr(owner, name, replacement)

    # -- the wrappers: each checks the cheap things first ----------------------------

    def _sleep(self, original: Callable[[float], None]) -> Callable[[float], None]:
        report = self._report

        def sleep(secs: float) -> None:
            if _get_running_loop() is not None:
                report("time.sleep", secs)
            original(secs)

        return sleep

    def _path_call(self, call: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        report = self._report

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
                if _get_running_loop() is not None:
                    report(call, path)
                return original(path, *args, **kwargs)

            return wrapper

        return make

    def _fd_call(
        self, call: str, *, regular_only: bool
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        report = self._report

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(fd: Any, *args: Any) -> Any:
                if _get_running_loop() is not None and (not regular_only or _regular_file(fd)):
                    report(call, f"fd {fd}")
                return original(fd, *args)

            return wrapper

        return make

    def _socket_call(self, call: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        report = self._report

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(sock: Any, *args: Any, **kwargs: Any) -> Any:
                # asyncio's sockets (and any other non-blocking one) return at once
                if _get_running_loop() is not None and blocking_socket(sock):
                    report(call, _peer(sock))
                return original(sock, *args, **kwargs)

            return wrapper

        return make

    def _condition_wait(self, original: Callable[..., bool]) -> Callable[..., bool]:
        report = self._report

        def wait(condition: Any, timeout: float | None = None) -> bool:
            if _get_running_loop() is not None and timeout != 0:
                # named after what the program called: Event.wait, Queue.get, Future.result
                report("threading.Condition.wait", "")
            return original(condition, timeout)

        return wait

    def _thread_join(self, original: Callable[..., None]) -> Callable[..., None]:
        report = self._report

        def join(thread: threading.Thread, timeout: float | None = None) -> None:
            if _get_running_loop() is not None and thread.is_alive() and timeout != 0:
                report("threading.Thread.join", thread.name)
            original(thread, timeout)

        return join
