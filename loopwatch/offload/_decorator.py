"""``offload``: the decorator, its validation, and how each target runs a call."""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import functools
import inspect
import multiprocessing
import pickle
import reprlib
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast, get_args, overload

import wrapt

from loopwatch.offload import _pools
from loopwatch.offload._auto import Policy, timed_steps
from loopwatch.offload._process import Call
from loopwatch.offload._refs import (
    PROTOCOL,
    WRAPPER_TYPES,
    argument_error,
    call_coroutine_function,
    display_name,
    function_spec,
    portable,
    split_bound,
)
from loopwatch.offload.errors import OffloadError, RemoteTraceback, UnpicklableError

P = ParamSpec("P")
R = TypeVar("R")

Mode = Literal["auto", "thread", "process"]
MODES: Final[tuple[str, ...]] = get_args(Mode)

_UNSET: Any = object()

# asyncio.iscoroutinefunction() (3.11) and inspect.iscoroutinefunction() (3.12+)
# look for these markers: calling the wrapper returns a coroutine, whatever it wraps.
_ASYNC_MARKER = getattr(asyncio.coroutines, "_is_coroutine", None)
_INSPECT_MARKER = getattr(inspect, "_is_coroutine_mark", None)


class _BoundOffloaded(wrapt.BoundFunctionWrapper[..., Any]):
    _is_coroutine = _ASYNC_MARKER
    _is_coroutine_marker = _INSPECT_MARKER


class _Offloaded(wrapt.FunctionWrapper[..., Any]):
    __bound_function_wrapper__ = _BoundOffloaded
    _is_coroutine = _ASYNC_MARKER
    _is_coroutine_marker = _INSPECT_MARKER


WRAPPER_TYPES.extend([_Offloaded, _BoundOffloaded])


class _Options:
    __slots__ = ("context", "max_workers", "target")

    def __init__(
        self, target: str | Executor, max_workers: int | None, context: BaseContext | None
    ) -> None:
        self.target = target
        self.max_workers = max_workers
        self.context = context

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}" for k, v in (("max_workers", self.max_workers),
                                        ("mp_context", self.context)) if v is not None
        )
        return f"offload({self.target!r}{extra})"


class OffloadDecorator:
    """What ``offload("thread")`` (or any target) returns: apply it to a function."""

    __slots__ = ("_options",)

    def __init__(self, options: _Options) -> None:
        self._options = options

    def __repr__(self) -> str:
        return f"<loopwatch {self._options!r} decorator>"

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]:
        ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __call__(self, func: Any, /) -> Any:
        return _decorate(self._options, func)


@overload
def offload(func: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def offload(func: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def offload(
    target: Mode | Executor = "auto",
    /,
    *,
    max_workers: int | None = None,
    mp_context: str | BaseContext | None = None,
) -> OffloadDecorator: ...


def offload(
    target: Any = _UNSET,
    /,
    *,
    max_workers: int | None = None,
    mp_context: str | BaseContext | None = None,
) -> Any:
    """Run a function off the event loop: ``await f(x)`` runs it in a thread, a process, anywhere.

    ``target``:

    - ``"auto"`` (the default, also plain ``@offload``): run inline until a
      :func:`loopwatch.watch` session sees the function block the loop, then,
      once and for good, run later calls in a worker process (mostly
      computing, and it can be pickled) or a thread (waiting, or not
      picklable). The decision is logged on the ``loopwatch`` logger and
      recorded in the report's ``events``. A call whose arguments a worker
      process cannot receive runs in a thread instead, as do later ones.
    - ``"thread"``: a shared thread pool; context variables are copied in,
      as ``asyncio.to_thread`` does.
    - ``"process"``: a shared pool of worker processes ("spawn" by default),
      each running its own event loop: ``async def`` functions run there as
      tasks, many at once per worker; plain ones run in the worker's main
      thread. The function must be importable by name (module level, not a
      lambda or nested function) and arguments and result picklable, else
      :class:`~loopwatch.offload.UnpicklableError` names the culprit before
      anything runs. Context variables do not travel. Exceptions come back
      with the worker's traceback as ``__cause__``; a worker that dies fails
      its calls with :class:`~loopwatch.offload.WorkerCrashedError` and is
      replaced. Pools shut down at exit (or :func:`~loopwatch.offload.shutdown`).
    - any :class:`concurrent.futures.Executor`, e.g. dask's
      ``client.get_executor(pure=False)`` to run on a cluster.

    Works on ``def`` and ``async def`` functions, methods, classmethods and
    staticmethods (put ``@classmethod``/``@staticmethod`` outermost for type
    checkers); name, docstring and signature are kept. ``max_workers`` sizes
    the thread or process pool (pools are shared per set of options);
    ``mp_context`` ("spawn", "forkserver", "fork" or a multiprocessing context)
    picks how worker processes start.

    Cancelling the awaiting task cancels the call where possible: a call not
    started yet never starts; an ``async def`` function running in a worker
    process or a thread is cancelled there. A plain function that is already
    running cannot be interrupted: it runs to the end and its result is
    dropped (in a worker process, that worker starts no other plain call
    meanwhile). Other executors cancel what their futures can.

    >>> import asyncio, time
    >>> @offload("thread")
    ... def slow_square(x: int) -> int:
    ...     time.sleep(0.01)      # would block the loop; runs in a thread instead
    ...     return x * x
    >>> asyncio.run(slow_square(7))
    49
    """
    if target is _UNSET:
        target = "auto"
    elif _is_function_like(target):
        return _decorate(_options("auto", max_workers, mp_context), target)
    return OffloadDecorator(_options(target, max_workers, mp_context))


def _is_function_like(obj: Any) -> bool:
    if isinstance(obj, (classmethod, staticmethod)):
        return True
    return callable(obj) and not isinstance(obj, (Executor, type))


def _options(target: Any, max_workers: Any, mp_context: Any) -> _Options:
    allowed = 'use "auto", "thread", "process" or a concurrent.futures.Executor instance'
    if isinstance(target, str):
        if target not in MODES:
            close = difflib.get_close_matches(target, MODES, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise ValueError(f"offload target {target!r} is not valid: {allowed}{hint}")
    elif isinstance(target, type) and issubclass(target, Executor):
        raise TypeError(
            f"offload target {target.__name__} is an executor class: pass an instance, "
            f"e.g. offload({target.__name__}())"
        )
    elif not isinstance(target, Executor):
        raise TypeError(
            f"offload target must be a string or an executor, not "
            f"{type(target).__name__} {reprlib.repr(target)}: {allowed}"
        )
    if max_workers is not None:
        if isinstance(target, Executor):
            raise ValueError(
                "max_workers is for the 'thread', 'process' and 'auto' targets; "
                "size your executor when you create it"
            )
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(
                f"max_workers must be a positive integer or None, not {max_workers!r}"
            )
    context = None
    if mp_context is not None:
        if target not in ("process", "auto"):
            raise ValueError(
                f"mp_context is for the 'process' and 'auto' targets, not {target!r}"
            )
        if isinstance(mp_context, str):
            try:
                context = multiprocessing.get_context(mp_context)
            except ValueError:
                methods = ", ".join(repr(m) for m in multiprocessing.get_all_start_methods())
                raise ValueError(
                    f"mp_context {mp_context!r} is not a start method here: use one of {methods}"
                )
        elif isinstance(mp_context, BaseContext):
            context = mp_context
        else:
            raise TypeError(
                f"mp_context must be a start method name or a multiprocessing context, not "
                f"{type(mp_context).__name__}"
            )
    return _Options(target, max_workers, context)


def _is_async(func: Any) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # a callable object whose __call__ is async
    return not inspect.isfunction(func) and inspect.iscoroutinefunction(type(func).__call__)


def _decorate(options: _Options, func: Any) -> Any:
    if isinstance(func, (_Offloaded, _BoundOffloaded)):
        raise TypeError(f"{display_name(func)} is already offloaded; apply @offload once")
    inner = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if not callable(inner):
        raise TypeError(
            f"offload can only wrap a function or method, not {type(func).__name__} "
            f"{reprlib.repr(func)}"
        )
    if inspect.isgeneratorfunction(inner) or inspect.isasyncgenfunction(inner):
        raise TypeError(
            f"offload cannot wrap {display_name(inner)}: it is a generator function, whose "
            "body would run on the event loop as it is iterated; return a list instead"
        )
    return _Offloaded(func, _Handler(options, inner, _is_async(inner)))


class _Handler:
    """The wrapt wrapper function: turns each call into a coroutine running it on the target."""

    __slots__ = ("_run", "_specs", "inner", "is_async", "name", "options", "policy")

    def __init__(self, options: _Options, inner: Any, is_async: bool) -> None:
        self.options = options
        self.inner = inner
        self.is_async = is_async
        self.name = display_name(inner)
        self.policy: Policy | None = None
        self._specs: dict[int, tuple[Any, bytes]] = {}
        target = options.target
        if target == "auto":
            self.policy = Policy(inner)
            self._run = self._auto
        elif target == "thread":
            self._run = self._thread
        elif target == "process":
            self._run = self._process
        else:
            self._run = self._executor

    def __call__(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        return self._run(wrapped, instance, args, kwargs)

    # -- thread ---------------------------------------------------------------

    def _thread(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        pool = _pools.thread_pool(self.options.max_workers)
        return self._thread_like(pool, wrapped, args, kwargs)

    # -- process --------------------------------------------------------------

    def _process(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        return self._in_process(wrapped, instance, args, kwargs)

    def _spec(self, func: Any) -> bytes:
        cached = self._specs.get(id(func))
        if cached is not None and cached[0] is func:
            return cached[1]
        spec = function_spec(func)
        if len(self._specs) < 64:
            self._specs[id(func)] = (func, spec)
        return spec

    async def _in_process(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if sys.platform == "win32":
            raise OffloadError(
                'offload("process") is not supported on Windows yet: use '
                "offload(concurrent.futures.ProcessPoolExecutor()) there"
            )
        func, head = split_bound(wrapped, instance)
        spec = self._spec(func)
        if head:
            args = head + args
        try:
            payload = pickle.dumps((spec, args, kwargs), PROTOCOL)
        except Exception as exc:
            raise argument_error(func, args, kwargs, exc) from None
        pool = _pools.process_pool(self.options.max_workers, self.options.context)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        call = Call(payload, self.is_async, self.name, loop, future)
        pool.submit(call)
        try:
            return await future
        except asyncio.CancelledError:
            pool.cancel(call)
            raise

    # -- any executor ---------------------------------------------------------

    def _executor(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        executor = cast(Executor, self.options.target)
        if isinstance(executor, ThreadPoolExecutor):
            return self._thread_like(executor, wrapped, args, kwargs)
        func, head = split_bound(wrapped, instance)
        # Executors that pickle (ProcessPoolExecutor, dask) need the function by
        # a name that leads past our wrapper, and self/cls as an argument.
        fn = portable(func)
        if self.is_async:
            head = (fn, *head)
            fn = call_coroutine_function
        call = functools.partial(fn, *head, *args, **kwargs)
        return _in_executor(executor, call)

    def _thread_like(
        self, executor: Executor, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        if self.is_async:
            return _async_in_thread(executor, wrapped, args, kwargs)
        return _in_thread(executor, wrapped, args, kwargs)

    # -- auto -----------------------------------------------------------------

    def _auto(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        policy = self.policy
        assert policy is not None
        if not policy.registered:
            policy.register()
        target = policy.target
        if target is None:
            if self.is_async:
                return cast(Coroutine[Any, Any, Any], timed_steps(policy, wrapped(*args, **kwargs)))
            return _inline(policy, wrapped, args, kwargs)
        if target == "thread":
            return self._thread(wrapped, instance, args, kwargs)
        return self._auto_process(wrapped, instance, args, kwargs)

    async def _auto_process(
        self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return await self._in_process(wrapped, instance, args, kwargs)
        except UnpicklableError as exc:
            if isinstance(exc.__cause__, RemoteTraceback):
                raise  # raised by the function itself, not about sending it
            error = exc
        # "auto" must not break a call that worked inline: fall back to a thread.
        assert self.policy is not None
        if error.what == "result":
            self.policy.downgrade(f"{error}; the call was run again in a thread")
        else:
            self.policy.downgrade(str(error))
        return await self._thread(wrapped, instance, args, kwargs)


async def _inline(
    policy: Policy, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return policy.run_timed(func, args, kwargs)


async def _in_thread(
    executor: Executor, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return await loop.run_in_executor(executor, call)


async def _in_executor(executor: Executor, call: Callable[[], Any]) -> Any:
    return await asyncio.wrap_future(executor.submit(call))


class _LoopInThread:
    """Runs an ``async def`` function on a new loop in a pool thread; cancellable from outside."""

    __slots__ = ("_args", "_cancelled", "_func", "_kwargs", "_lock", "_loop", "_task")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._func = func
        self._args = args
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None

    def run(self) -> Any:
        return asyncio.run(self._main())

    async def _main(self) -> Any:
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
        return await self._func(*self._args, **self._kwargs)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # it already finished


async def _async_in_thread(
    executor: Executor, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    runner = _LoopInThread(func, args, kwargs)
    future = loop.run_in_executor(executor, context.run, runner.run)
    try:
        return await future
    except asyncio.CancelledError:
        runner.cancel()
        raise
