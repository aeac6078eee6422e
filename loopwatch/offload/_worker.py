"""The worker process: an event loop for ``async def`` calls, the main thread for plain ones.

The loop runs in a thread of its own and owns the socket to the parent: it
reads every request, runs async calls as tasks (so one worker serves many at
once) and cancels them on request. Plain functions run one at a time in the
main thread, as in a ``ProcessPoolExecutor`` worker (signal handlers and other
main-thread-only code keep working), and send their own result. The loop
stays responsive while they run, so requests and cancellations keep flowing.

The worker exits when the parent closes its end of the socket (or dies).
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import queue
import signal
import socket
import threading
import traceback
from typing import Any

from loopwatch.offload import _protocol as p
from loopwatch.offload._refs import PROTOCOL, FunctionRef, display_name, result_error
from loopwatch.offload.errors import OffloadError

_STOP = None


def main(sock: socket.socket) -> None:
    """Entry point of a worker process (the target of its ``multiprocessing.Process``)."""
    # Ctrl-C reaches the whole process group: the parent decides when workers end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Worker(sock).run()


class _Worker:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.sync_calls: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self.state_lock = threading.Lock()
        self.sync_pending: set[int] = set()
        self.sync_cancelled: set[int] = set()
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.functions: dict[bytes, Any] = {}
        self.reader = p.FrameReader()

    # -- main thread: plain functions -----------------------------------------

    def run(self) -> None:
        loop_thread = threading.Thread(
            target=self._run_loop, name="loopwatch-worker-loop", daemon=True
        )
        loop_thread.start()
        while (item := self.sync_calls.get()) is not _STOP:
            call_id, body = item
            if self._take_cancelled(call_id, running=False):
                continue
            try:
                reply = self._run_sync(call_id, body)
            except BaseException as exc:
                reply = _failed_frame(call_id, f"the worker failed to run the call: {exc!r}")
            if not self._take_cancelled(call_id, running=True):
                self._send(reply)
        loop_thread.join(timeout=5)
        try:
            self.sock.close()
        except OSError:
            pass

    def _take_cancelled(self, call_id: int, *, running: bool) -> bool:
        """True (and the parent told) if the call was cancelled; forgets it when done."""
        with self.state_lock:
            cancelled = call_id in self.sync_cancelled
            if cancelled or running:
                self.sync_cancelled.discard(call_id)
                self.sync_pending.discard(call_id)
        if cancelled:
            self._send(p.frame(p.CANCELLED, call_id))
        return cancelled

    def _run_sync(self, call_id: int, body: bytes) -> bytes:
        loaded = self._load(call_id, body)
        if isinstance(loaded, bytes):
            return loaded
        func, args, kwargs = loaded
        try:
            value = func(*args, **kwargs)
        except BaseException as exc:
            return _error_frame(call_id, exc)
        finally:
            del args, kwargs
        return _result_frame(call_id, func, value)

    def _load(
        self, call_id: int, body: bytes
    ) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | bytes:
        """Unpickle a call: (function, args, kwargs), or a reply frame saying why not."""
        try:
            spec, args, kwargs = pickle.loads(body)
        except BaseException as exc:
            return _failed_frame(
                call_id, f"the arguments of a call could not be unpickled in the worker "
                f"process: {type(exc).__name__}: {exc}"
            )
        func = self.functions.get(spec)
        if func is None:
            try:
                func = pickle.loads(spec)
                if isinstance(func, FunctionRef):
                    func = func.resolve()
            except BaseException as exc:
                return _failed_frame(
                    call_id, f"the worker process could not load the function: "
                    f"{type(exc).__name__}: {exc}"
                )
            if len(self.functions) < 4096:
                self.functions[spec] = func
        return func, args, kwargs

    # -- loop thread ----------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self.sync_calls.put(_STOP)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.eof: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sock.fileno(), self._on_readable)
        self._send(p.frame(p.HELLO, 0, pickle.dumps(os.getpid(), PROTOCOL)))
        try:
            await self.eof
        finally:
            loop.remove_reader(self.sock.fileno())
            for task in list(self.tasks.values()):
                task.cancel()

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except OSError:
            data = b""
        if not data:
            if not self.eof.done():
                self.eof.set_result(None)
            return
        for kind, call_id, body in self.reader.feed(data):
            if kind == p.CALL_SYNC:
                with self.state_lock:
                    self.sync_pending.add(call_id)
                self.sync_calls.put((call_id, body))
            elif kind == p.CALL_ASYNC:
                task = asyncio.ensure_future(self._run_async(call_id, body))
                self.tasks[call_id] = task
                task.add_done_callback(functools.partial(self._async_done, call_id))
            elif kind == p.CANCEL:
                self._cancel(call_id)

    def _cancel(self, call_id: int) -> None:
        task = self.tasks.get(call_id)
        if task is not None:
            task.cancel()
            return
        with self.state_lock:
            if call_id in self.sync_pending:
                # Queued: it is skipped. Running: it cannot be interrupted; it
                # finishes and its result is dropped instead of sent.
                self.sync_cancelled.add(call_id)

    async def _run_async(self, call_id: int, body: bytes) -> bytes:
        loaded = self._load(call_id, body)
        if isinstance(loaded, bytes):
            return loaded
        func, args, kwargs = loaded
        try:
            value = await func(*args, **kwargs)
        except asyncio.CancelledError:
            raise  # the task ends cancelled, and _async_done says so
        except BaseException as exc:
            return _error_frame(call_id, exc)
        return _result_frame(call_id, func, value)

    def _async_done(self, call_id: int, task: asyncio.Task[bytes]) -> None:
        # A done callback rather than code in the task: a task cancelled before
        # its first step never runs any of its code.
        self.tasks.pop(call_id, None)
        if task.cancelled():
            self._send(p.frame(p.CANCELLED, call_id))
            return
        try:
            reply = task.result()
        except BaseException as exc:
            reply = _failed_frame(call_id, f"the worker process failed to run the call: {exc!r}")
        self._send(reply)

    # -- both threads ---------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self.send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the parent is gone: the loop sees EOF and the worker ends


def _result_frame(call_id: int, func: Any, value: Any) -> bytes:
    try:
        body = pickle.dumps(value, PROTOCOL)
    except Exception as exc:
        return _failed_frame(call_id, result_error(display_name(func), value, exc))
    return p.frame(p.RESULT, call_id, body)


def _error_frame(call_id: int, exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        pickled: bytes | None = pickle.dumps(exc, PROTOCOL)
    except Exception:
        pickled = None
    kind = type(exc)
    type_name = f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type_name}>"
    body = pickle.dumps((pickled, type_name, message, text), PROTOCOL)
    return p.frame(p.ERROR, call_id, body)


def _failed_frame(call_id: int, error: OffloadError | str) -> bytes:
    """A reply saying loopwatch (not the function) failed: an OffloadError, or its message."""
    if isinstance(error, str):
        error = OffloadError(error)
    return p.frame(p.FAILED, call_id, pickle.dumps(error, PROTOCOL))
