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

A wrapper looks like what it wraps: the original's name, qualified name, module,
doc and signature (``__wrapped__``), and it pickles by reference, as the name it
is installed under, so a ``ProcessPoolExecutor`` can be handed ``time.sleep`` or
``os.stat`` while strict mode is on.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
import os
import pkgutil
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


def _installed_name(owner: Any, name: str) -> str:
    """``name`` in ``owner`` (a module or a class) as pickle and ``pkgutil.resolve_name``
    spell it: ``os:stat``, ``socket:socket.recv``."""
    if isinstance(owner, type):
        return f"{owner.__module__}:{owner.__qualname__}.{name}"
    return f"{owner.__name__}:{name}"


def _found_by_name(function: Any, owner: Any, name: str) -> bool:
    """Whether pickle, looking ``function`` up by its ``__module__`` and ``__qualname__``,
    finds it once it is installed as ``owner.name``."""
    module, qualname = getattr(function, "__module__", None), function.__qualname__
    if not isinstance(module, str) or not isinstance(qualname, str):
        return False
    path, _, last = qualname.rpartition(".")
    found = sys.modules.get(module)
    for part in filter(None, path.split(".")):
        found = getattr(found, part, None)
    return found is owner and last == name


class _Installed(functools.partial):  # type: ignore[type-arg]
    """A module's function wrapped where its own name leads pickle to the original:
    ``os.stat`` says it is ``posix.stat``. Pickled as the name it is installed under,
    which loads as whatever is there then (the wrapper, or the original once strict
    mode is off). A partial with no arguments of its own, a C call in front of the
    wrapper: on 3.11 it adds about 80 ns to the wrapper's 200 (a closure cannot be
    pickled under a name that is not its own; a bound method, which can, would
    change the signature and ``inspect.ismethod``)."""

    _installed_as: str

    def __reduce__(self) -> tuple[Any, ...]:
        return pkgutil.resolve_name, (self._installed_as,)

    def __repr__(self) -> str:
        return repr(self.func)


def _as_original(wrapper: Any, original: Any, owner: Any, name: str) -> Any:
    """``wrapper`` (a function), looking like ``original`` as ``owner.name``."""
    functools.update_wrapper(wrapper, original)  # names, doc, __wrapped__ (the signature)
    if getattr(original, "__module__", None) is None:  # a C method: socket.socket.recv
        wrapper.__module__ = owner.__module__ if isinstance(owner, type) else owner.__name__
    if _found_by_name(wrapper, owner, name):
        return wrapper  # time.sleep, threading.Condition.wait, socket.socket.recv...
    if not isinstance(owner, type):
        installed = _Installed(wrapper)
        functools.update_wrapper(installed, original)
        installed._installed_as = _installed_name(owner, name)
        return installed
    # a method pickle could not find by its own name (none so far): named where it is
    wrapper.__module__, _, wrapper.__qualname__ = _installed_name(owner, name).partition(":")
    return wrapper


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
    """``isinstance(lock, threading.Lock)`` holds for real locks and wrapped ones alike.

    The class carries the factory's names and doc, and its ``__wrapped__`` (here, so
    that the locks themselves have none); it is pickled as the name it is installed
    under (``threading.Lock``: its own, ``_thread.allocate_lock``, is the original's).
    """

    _real: type
    _wrapped: Any
    _installed_as: str

    def __instancecheck__(cls, instance: Any) -> bool:
        return type.__instancecheck__(cls, instance) or isinstance(instance, cls._real)

    @property
    def __wrapped__(cls) -> Any:
        return cls._wrapped


def _reduce_lock_class(cls: _LockType) -> tuple[Any, ...]:
    return pkgutil.resolve_name, (cls._installed_as,)


# a class is pickled by its own name unless its metaclass has a reducer in copyreg
copyreg.pickle(_LockType, _reduce_lock_class)


def _lock_class(
    name: str, make: Callable[[], Any], report: Report, installed_as: str
) -> _LockType:
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
        if attribute == "_lock":
            raise AttributeError(attribute)  # not made by __init__ (copy's reconstruction)
        # locked(), _is_owned(), _release_save(), _at_fork_reinit()...: the real lock's
        return getattr(self._lock, attribute)

    def __repr__(self: Any) -> str:
        return repr(self._lock)

    def __reduce_ex__(self: Any, protocol: Any) -> Any:
        # pickle and copy: as the real lock ("cannot pickle '_thread.lock' object")
        return self._lock.__reduce_ex__(protocol)

    namespace = {
        "__init__": __init__, "acquire": acquire, "__enter__": __enter__,
        "__exit__": __exit__, "release": release, "__getattr__": __getattr__,
        "__repr__": __repr__, "__reduce_ex__": __reduce_ex__, "__slots__": ("_lock",),
        "__module__": make.__module__, "__qualname__": make.__qualname__,
        "__doc__": make.__doc__,
    }
    try:
        # as the original says it (3.13 looks at a class's own __init__ before __wrapped__)
        namespace["__signature__"] = inspect.signature(make)
    except (TypeError, ValueError):
        pass  # the original has none to show either
    cls = _LockType(make.__name__, (), namespace)
    cls._real = type(make())
    cls._wrapped = make
    cls._installed_as = installed_as
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
        for name in ("Lock", "RLock"):
            self._wrap(threading, name, functools.partial(
                _lock_class, name, report=report, installed_as=f"threading:{name}"))
        self._wrap(threading.Condition, "wait", self._condition_wait)
        self._wrap(threading.Thread, "join", self._thread_join)

    def remove(self) -> None:
        for patch in reversed(self._patches):
            setattr(patch.owner, patch.name, patch.original)
        self._patches = []

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        replacement = make(original)
        if not isinstance(replacement, _LockType):  # named by _lock_class
            replacement = _as_original(replacement, original, owner, name)
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
