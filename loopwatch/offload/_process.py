"""The parent side of the process pool: workers, scheduling, one reader thread.

Each worker is a process running ``_worker.main``, connected by a socket pair.
Calls are pickled in the caller's thread (so a bad argument fails right there)
and sent straight away without blocking (``MSG_DONTWAIT``); whatever does not
fit goes to the worker's outbox, which the reader thread flushes.

Scheduling: a worker runs one plain (sync) call at a time, and holds at most
one more, prefetched once every worker is busy; further sync calls wait in the
parent's queue, where cancelling them costs nothing.
Async calls go to the least busy worker at once, since its event loop serves
many of them. Workers are started on demand, up to ``max_workers``, by the
reader thread (``Process.start`` takes milliseconds: not on the caller's loop).

The reader thread ("loopwatch-offload-reader") waits on every worker socket
and process sentinel. It unpickles replies and settles the callers' asyncio
futures with one ``call_soon_threadsafe`` per loop per batch. A sentinel firing
means the worker is gone: its calls fail with :class:`WorkerCrashedError` and
a new worker is started when there is work for it.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import threading
import time
from collections import deque
from multiprocessing.context import BaseContext
from typing import Any

from loopwatch._log import log_once
from loopwatch.offload import _protocol as p
from loopwatch.offload import _worker
from loopwatch.offload.errors import (
    OffloadError,
    RemoteError,
    RemoteTraceback,
    WorkerCrashedError,
)

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_names = itertools.count(1)
_SYNC_DEPTH = 2  # sync calls a worker holds at once: one running, one prefetched


class Call:
    """One call on its way through the pool."""

    __slots__ = ("cancelled", "future", "id", "is_async", "loop", "name", "payload", "worker")

    def __init__(
        self,
        payload: bytes,
        is_async: bool,
        name: str,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.id = 0
        self.payload = payload
        self.is_async = is_async
        self.name = name
        self.loop = loop
        self.future = future
        self.worker: _Worker | None = None
        self.cancelled = False


class _Worker:
    __slots__ = (
        "calls",
        "dead",
        "name",
        "outbox",
        "pid",
        "process",
        "reader",
        "ready",
        "sock",
        "sync_count",
        "watching",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: Any = None
        self.sock: socket.socket | None = None
        self.outbox: deque[bytes | memoryview] = deque()
        self.calls: dict[int, Call] = {}
        self.sync_count = 0  # sync calls sent to it: running, plus at most one prefetched
        self.pid: int | None = None
        self.ready = False
        self.reader = p.FrameReader()
        self.watching = 0  # selector events registered for the socket
        self.dead = False


class ProcessPool:
    """Worker processes with an event loop each; see the module docstring."""

    def __init__(self, max_workers: int | None = None, context: BaseContext | None = None):
        self.max_workers = max_workers or os.cpu_count() or 1
        self.context = context or multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._queue: deque[Call] = deque()
        self._starting: list[_Worker] = []
        self._dirty: set[_Worker] = set()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_pending = False
        self._pid = os.getpid()

    # -- caller side (any thread with a running loop) -------------------------

    def submit(self, call: Call) -> None:
        with self._lock:
            if self._closed or self._pid != os.getpid():
                raise OffloadError("the offload process pool is shut down")
            if self._thread is None:
                self._start_reader_locked()
            call.id = next(self._ids)
            worker = self._pick_locked(call.is_async)
            if worker is None:
                self._queue.append(call)
            else:
                self._assign_locked(worker, call)

    def cancel(self, call: Call) -> None:
        """The caller stopped waiting: drop the call if queued, else ask its worker to cancel it."""
        with self._lock:
            worker = call.worker
            if worker is None:
                try:
                    self._queue.remove(call)
                except ValueError:
                    pass
                return
            if call.cancelled or call.id not in worker.calls:
                return
            call.cancelled = True
            self._write_locked(worker, p.frame(p.CANCEL, call.id))

    def worker_pids(self) -> list[int]:
        """Pids of the workers that have started (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._workers if w.pid is not None]

    # -- scheduling (lock held) -----------------------------------------------

    def _pick_locked(self, is_async: bool) -> _Worker | None:
        """The worker for a new call; None: wait in the queue (sync calls only)."""
        workers = self._workers
        if is_async:
            best = min(workers, key=lambda w: (w.sync_count > 0, len(w.calls)), default=None)
            if best is not None and not best.calls:
                return best
            if len(workers) < self.max_workers:
                return self._new_worker_locked()
            return best
        idle = [w for w in workers if w.sync_count == 0]
        if idle:
            return min(idle, key=lambda w: len(w.calls))
        if len(workers) < self.max_workers:
            return self._new_worker_locked()
        # Every worker is running a sync call: prefetch one more into each, so that
        # it starts the next call without waiting for a round trip through here
        # (which, with the CPUs busy, can take a scheduler time slice).
        ready = [w for w in workers if w.sync_count < _SYNC_DEPTH]
        return min(ready, key=lambda w: len(w.calls)) if ready else None

    def _assign_locked(self, worker: _Worker, call: Call) -> None:
        call.worker = worker
        worker.calls[call.id] = call
        if not call.is_async:
            worker.sync_count += 1
        kind = p.CALL_ASYNC if call.is_async else p.CALL_SYNC
        payload, call.payload = call.payload, b""
        self._write_locked(worker, p.frame(kind, call.id, payload))

    def _dispatch_queue_locked(self) -> None:
        while self._queue and not self._closed:
            worker = self._pick_locked(is_async=False)
            if worker is None:
                return
            self._assign_locked(worker, self._queue.popleft())

    def _new_worker_locked(self) -> _Worker:
        worker = _Worker(f"loopwatch-offload-{next(_names)}")
        self._workers.append(worker)
        self._starting.append(worker)
        self._wake_locked()
        return worker

    def _write_locked(self, worker: _Worker, data: bytes) -> None:
        sock = worker.sock
        if sock is not None and not worker.outbox and _DONTWAIT:
            try:
                sent = sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the worker is gone; its sentinel fails its calls
            if sent == len(data):
                return
            worker.outbox.append(memoryview(data)[sent:])
        else:
            worker.outbox.append(data)
        if sock is not None:
            self._dirty.add(worker)
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._wake_pending or self._wake_w is None:
            return
        self._wake_pending = True
        try:
            self._wake_w.send(b"\0", _DONTWAIT)
        except OSError:
            pass

    # -- the reader thread ----------------------------------------------------

    def _start_reader_locked(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, _READ, (None, False))
        self._thread = threading.Thread(
            target=self._run, name="loopwatch-offload-reader", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        while True:
            try:
                for key, mask in selector.select():
                    worker, is_socket = key.data
                    if worker is None:
                        self._drain_wake()
                    elif worker.dead:
                        continue  # a stale event from this batch, for a worker reaped in it
                    elif is_socket:
                        if mask & _WRITE:
                            self._flush(worker)
                        if mask & _READ:
                            self._read(worker)
                    else:
                        self._reap(worker)
                if self._service():
                    return
            except Exception:
                if self._closed:
                    return
                log_once(
                    "offload-reader",
                    "loopwatch's offload reader thread failed; some offloaded calls may "
                    "not complete",
                )
                time.sleep(0.01)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with self._lock:
            self._wake_pending = False
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def _service(self) -> bool:
        """Start requested workers and update write interest; True when the pool closed."""
        with self._lock:
            if self._closed:
                return True
            starting, self._starting = self._starting, []
        for worker in starting:
            self._start_worker(worker)
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            for worker in dirty:
                self._watch_locked(worker)
            return self._closed

    def _watch_locked(self, worker: _Worker) -> None:
        if worker.sock is None or worker.watching == 0:
            return
        events = _READ | (_WRITE if worker.outbox else 0)
        if events != worker.watching:
            assert self._selector is not None
            self._selector.modify(worker.sock, events, (worker, True))
            worker.watching = events

    def _start_worker(self, worker: _Worker) -> None:
        parent_sock, child_sock = socket.socketpair()
        process = self.context.Process(  # type: ignore[attr-defined]
            target=_worker.main, args=(child_sock,), name=worker.name, daemon=False
        )
        try:
            process.start()
        except BaseException as exc:
            parent_sock.close()
            with self._lock:
                self._workers.remove(worker)
                calls = list(worker.calls.values())
                worker.calls.clear()
            for call in calls:
                _settle(call, OffloadError(f"could not start a worker process for {call.name}: "
                                           f"{type(exc).__name__}: {exc}"))
            return
        finally:
            child_sock.close()
        assert self._selector is not None
        with self._lock:
            worker.process = process
            worker.sock = parent_sock
            worker.pid = process.pid
            worker.watching = _READ | (_WRITE if worker.outbox else 0)
            self._selector.register(parent_sock, worker.watching, (worker, True))
            self._selector.register(process.sentinel, _READ, (worker, False))

    def _flush(self, worker: _Worker) -> None:
        with self._lock:
            sock = worker.sock
            while worker.outbox and sock is not None:
                chunk = worker.outbox[0]
                try:
                    sent = sock.send(chunk, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    worker.outbox.clear()
                    break
                if sent < len(chunk):
                    worker.outbox[0] = memoryview(chunk)[sent:]
                    break
                worker.outbox.popleft()
            self._watch_locked(worker)

    def _read(self, worker: _Worker) -> None:
        assert worker.sock is not None
        try:
            data = worker.sock.recv(1 << 18)
        except OSError:
            data = b""
        if not data:
            # The worker is exiting; its sentinel follows and settles its calls.
            self._retire(worker)
            self._unwatch_socket(worker)
            return
        self._handle(worker, worker.reader.feed(data))

    def _retire(self, worker: _Worker) -> None:
        """Take an ending worker out of scheduling, so no new call goes to it."""
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)

    def _unwatch_socket(self, worker: _Worker) -> None:
        with self._lock:
            if worker.watching and worker.sock is not None:
                assert self._selector is not None
                self._selector.unregister(worker.sock)
                worker.watching = 0

    def _handle(self, worker: _Worker, frames: list[tuple[int, int, bytes]]) -> None:
        done: list[tuple[Call, int, bytes]] = []
        with self._lock:
            freed = False
            for kind, call_id, body in frames:
                if kind == p.HELLO:
                    worker.ready = True
                    continue
                call = worker.calls.pop(call_id, None)
                if call is None:
                    continue
                if not call.is_async:
                    worker.sync_count -= 1
                    freed = True
                if not call.cancelled:
                    done.append((call, kind, body))
            if freed:
                self._dispatch_queue_locked()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for call, kind, body in done:
            by_loop.setdefault(call.loop, []).append((call.future, _outcome(call, kind, body)))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, items)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more

    def _reap(self, worker: _Worker) -> None:
        """The worker's process ended: take its last replies, fail the rest, replace it."""
        assert self._selector is not None
        worker.dead = True
        self._selector.unregister(worker.process.sentinel)
        self._retire(worker)
        sock = worker.sock
        if sock is not None:
            if worker.watching:
                self._unwatch_socket(worker)
            frames: list[tuple[int, int, bytes]] = []
            while True:
                try:
                    data = sock.recv(1 << 18, _DONTWAIT)
                except OSError:
                    break
                if not data:
                    break
                frames.extend(worker.reader.feed(data))
            if frames:
                self._handle(worker, frames)
            sock.close()
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        with self._lock:
            self._dirty.discard(worker)
            calls = list(worker.calls.values())
            worker.calls.clear()
            worker.sync_count = 0
            worker.outbox.clear()
            worker.sock = None
            if not self._closed:
                self._dispatch_queue_locked()
        try:
            worker.process.close()
        except ValueError:
            pass
        how = _describe_exit(exitcode)
        if not worker.ready:
            how += (
                " while starting up, before the call ran (its error output says why; a script "
                "that does work at import needs an `if __name__ == \"__main__\":` guard)"
            )
        else:
            how += " before the call returned"
        for call in calls:
            _settle(
                call,
                WorkerCrashedError(
                    f"the worker process (pid {worker.pid}) running {call.name} {how}; "
                    "later calls go to a new worker",
                    exitcode=exitcode,
                ),
            )

    # -- shutdown and fork ----------------------------------------------------

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop the workers: they finish the calls they are running, up to ``timeout`` seconds.

        Calls still waiting fail with :class:`OffloadError`. Workers still busy
        after the timeout are terminated, then killed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
            orphans = list(self._queue)
            self._queue.clear()
            for worker in workers:
                orphans.extend(worker.calls.values())
                worker.calls.clear()
            self._wake_pending = False
            self._wake_locked()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for worker in workers:
            if worker.sock is not None:
                worker.sock.close()  # EOF: the worker ends after its current call
        deadline = time.monotonic() + timeout
        for worker in workers:
            if worker.process is not None:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            process = worker.process
            if process is not None and process.exitcode is None:
                process.terminate()
                process.join(1.0)
                if process.exitcode is None:
                    process.kill()
                    process.join(1.0)
            if process is not None and process.exitcode is not None:
                process.close()
        for closable in (self._selector, self._wake_r, self._wake_w):
            if closable is not None:
                closable.close()
        for call in orphans:
            if not call.cancelled:
                _settle(call, OffloadError(
                    f"the offload process pool was shut down before {call.name} returned"
                ))

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's workers without touching them, close our fds."""
        self._closed = True
        self._pid = -1
        for worker in list(self._workers):
            if worker.sock is not None:
                try:
                    worker.sock.close()
                except OSError:
                    pass
        for closable in (self._selector, self._wake_r, self._wake_w):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass
        self._workers = []
        self._queue = deque()


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


def _outcome(call: Call, kind: int, body: bytes) -> Any:
    """What the caller's future gets: a value, an exception, or ``_CANCELLED``."""
    if kind == p.RESULT:
        try:
            return _Value(pickle.loads(body))
        except Exception as exc:
            return OffloadError(
                f"the result of {call.name} could not be unpickled in this process: "
                f"{type(exc).__name__}: {exc}"
            )
    if kind == p.ERROR:
        return _remote_exception(body)
    if kind == p.FAILED:
        try:
            error = pickle.loads(body)
        except Exception as exc:
            return OffloadError(f"{call.name} failed in the worker process: {exc!r}")
        if type(error) is OffloadError:  # the worker did not know the function's name
            error = OffloadError(f"{call.name}: {error}")
        return error
    return _CANCELLED


def _remote_exception(body: bytes) -> BaseException:
    pickled, type_name, message, text = pickle.loads(body)
    exc: BaseException | None = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{type_name}: {message}", type_name=type_name)
    exc.__cause__ = RemoteTraceback(text)
    return exc


class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_CANCELLED = object()


def _settle(call: Call, outcome: Any) -> None:
    try:
        call.loop.call_soon_threadsafe(_settle_all, [(call.future, outcome)])
    except RuntimeError:
        pass


def _settle_all(items: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in items:
        if future.done():
            continue
        if isinstance(outcome, _Value):
            future.set_result(outcome.value)
        elif outcome is _CANCELLED:
            future.cancel()
        else:
            future.set_exception(outcome)
