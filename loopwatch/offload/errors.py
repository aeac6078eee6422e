"""Exceptions raised by ``@offload`` itself, as opposed to those of the offloaded function.

An exception raised by the offloaded function comes back as itself (same type,
same message), with the worker's traceback attached as its ``__cause__``
(a :class:`RemoteTraceback`), the way :mod:`concurrent.futures` does it.
"""

from __future__ import annotations


class OffloadError(Exception):
    """Raised when offloading a call failed for a reason other than the function raising.

    The base class of every exception in this module, so one ``except`` clause
    can tell "the function failed" from "loopwatch could not run it there".
    """


class WorkerCrashedError(OffloadError):
    """Raised when the worker process running a call died before it returned.

    A segfault, ``os._exit()``, the OOM killer: the call's outcome is unknown.
    Only the calls that were in that worker fail; the pool starts a new worker
    for later calls. ``exitcode`` is the worker's exit status (negative: the
    number of the signal that killed it).

    >>> str(WorkerCrashedError("parse() died", exitcode=-11))
    'parse() died'
    """

    def __init__(self, message: str, *, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.exitcode))


def _rebuild_crash(message: str, exitcode: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(message, exitcode=exitcode)


class UnpicklableError(OffloadError, TypeError):
    """Raised when a call cannot be sent to a worker process, or its result cannot come back.

    The message names what could not be pickled: the function itself, one
    argument (by parameter name), or the result. ``what`` holds that part:
    ``"function"``, ``"argument 'cb'"`` or ``"result"``. Nothing was run when
    the function or an argument is at fault.

    >>> str(UnpicklableError("argument 'cb' of parse() cannot be sent", what="argument 'cb'"))
    "argument 'cb' of parse() cannot be sent"
    """

    def __init__(self, message: str, *, what: str = "") -> None:
        super().__init__(message)
        self.what = what

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unpicklable, (str(self), self.what))


def _rebuild_unpicklable(message: str, what: str) -> UnpicklableError:
    return UnpicklableError(message, what=what)


class RemoteError(OffloadError):
    """Raised in place of an exception from a worker process that could not be rebuilt here.

    That happens when the exception object itself cannot be pickled or
    unpickled (it holds a socket, or its ``__init__`` takes required
    arguments that ``args`` does not carry). ``type_name`` is the remote
    exception's qualified type name; the remote traceback is attached as
    ``__cause__``.
    """

    def __init__(self, message: str, *, type_name: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as that exception's ``__cause__``.

    Printing the exception then shows the worker's traceback first, then the
    local one.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'
