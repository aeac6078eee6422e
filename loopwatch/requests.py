"""Which request a blocked task was serving: ``GET /users/{id}``, without code changes.

The watchdog asks once per block, from its own thread, about the task the
loop was running. The answer comes from, in order:

1. a label set with :func:`request` in the task's context (for servers
   loopwatch does not know: grpc.aio, a Kafka consumer, Django channels);
2. the task's coroutines, innermost first: an ASGI ``scope`` (uvicorn,
   hypercorn, and any ASGI framework: Starlette, FastAPI, Quart) or an
   aiohttp ``Request``. Where the framework routed the request, its route
   template is used (``/users/{id}``, not ``/users/42``).

Only the resulting string is kept, never the scope or request. Distinct
labels are capped per process (:data:`MAX_REQUESTS`); later new ones become
``"<method> <other paths>"``, so a report or a metrics label set cannot grow
without bound on a service with ids in its paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, TypeGuard

__all__ = ["MAX_REQUESTS", "request"]

#: Distinct request labels kept per process.
MAX_REQUESTS = 500

#: How far down a task's chain of awaited coroutines to look.
_MAX_DEPTH = 64

_label: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "loopwatch_request", default=None
)


#: The label of each task inside request(): how it is read on 3.11, where a task's
#: context cannot be (Task.get_context is 3.12+).
_by_task: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def request(label: str) -> Iterator[None]:
    """Name the request (or message, or job) the code inside runs for, in blocks it causes.

    For servers loopwatch does not recognise on its own; set it once per
    request, where the request is taken in. Tasks started inside inherit it
    (on Python 3.12+).

    >>> import loopwatch
    >>> async def handle(message):
    ...     with loopwatch.request(f"kafka orders partition={message.partition}"):
    ...         ...  # a block here reports request "kafka orders partition=3"
    """
    if not isinstance(label, str) or not label:
        raise TypeError(f"loopwatch.request() takes a non-empty string, not {label!r}")
    token = _label.set(label)
    task = _current_task()
    before = _by_task.get(task) if task is not None else None
    if task is not None:
        _by_task[task] = label
    try:
        yield
    finally:
        _label.reset(token)
        if task is not None:
            if before is None:
                _by_task.pop(task, None)
            else:
                _by_task[task] = before


def _current_task() -> Any:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # no loop running: only the context variable applies


class _Cap:
    """Distinct labels seen; past the cap, new ones fold into one per method."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, label: str, method: str) -> str:
        if label in self._seen:
            return label
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(label)
                return label
        return f"{method} <other paths>".strip()


_cap = _Cap(MAX_REQUESTS)


def request_of(task: Any) -> str | None:
    """The request ``task`` runs for (see the module docstring), or None."""
    label = _by_task.get(task) or _label_in_context(task)
    if label:
        return _cap(label, "")
    try:
        return _from_coroutines(task.get_coro())
    except Exception:
        return None  # a task of some other kind: no request to name


def _label_in_context(task: Any) -> str | None:
    get_context = getattr(task, "get_context", None)  # 3.12+
    if get_context is None:
        return None
    try:
        return get_context().get(_label)  # type: ignore[no-any-return]
    except Exception:
        return None


def _from_coroutines(coro: Any) -> str | None:
    found: str | None = None
    for _ in range(_MAX_DEPTH):
        if coro is None:
            break
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(
            coro, "ag_frame", None
        )
        if frame is not None:
            found = _from_locals(frame.f_locals) or found  # innermost wins: it is routed
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return found


def _from_locals(local: Mapping[str, Any]) -> str | None:
    scope = local.get("scope")
    if _is_http_scope(scope):
        return _from_scope(scope)
    owner = local.get("self")
    scope = getattr(owner, "scope", None)
    if _is_http_scope(scope):
        return _from_scope(scope)
    incoming = local.get("request")
    scope = getattr(incoming, "scope", None)
    if _is_http_scope(scope):
        return _from_scope(scope)
    if incoming is not None and _is_aiohttp_request(incoming):
        return _from_aiohttp(incoming)
    return None


def _is_http_scope(scope: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(scope, dict) and scope.get("type") in ("http", "websocket")


def _from_scope(scope: dict[str, Any]) -> str:
    method = str(scope.get("method") or "WS") if scope.get("type") == "http" else "WS"
    template = getattr(scope.get("route"), "path", None)
    path = template if isinstance(template, str) else str(scope.get("path", ""))
    return _cap(f"{method} {path}", method)


def _is_aiohttp_request(request: Any) -> bool:
    return type(request).__module__.startswith("aiohttp.") and hasattr(request, "match_info")


def _from_aiohttp(request: Any) -> str:
    method = str(request.method)
    try:
        template = request.match_info.route.resource.canonical
    except AttributeError:
        template = None  # not routed (yet), or no resource: the path itself
    path = template if isinstance(template, str) and template else str(request.path)
    return _cap(f"{method} {path}", method)
