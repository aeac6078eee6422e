"""How a function travels to another process, and how to say what could not.

Pickle sends a function by reference: module and qualified name, looked up
again on the other side. A function decorated with ``@offload`` at module or
class level breaks that, because the name now refers to the wrapper, not to the
function. :class:`FunctionRef` is the same reference with our wrappers (and
``classmethod``/``staticmethod``) peeled off on lookup.
"""

from __future__ import annotations

import asyncio
import inspect
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

import wrapt

from loopwatch.offload.errors import UnpicklableError

PROTOCOL = pickle.HIGHEST_PROTOCOL

#: Types that are our wrappers; filled in by the decorator module (no import cycle).
WRAPPER_TYPES: list[type] = []


def display_name(func: Any) -> str:
    """``parse()``, ``Parser.parse()``: how messages name a function."""
    inner = getattr(func, "__func__", func)
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
    if name is None:
        name = type(inner).__qualname__
    return f"{name}()"


def unwrap(obj: Any) -> Any:
    """Peel off our wrappers and classmethod/staticmethod, down to the function."""
    while True:
        if isinstance(obj, (classmethod, staticmethod)):
            obj = obj.__func__
        elif WRAPPER_TYPES and type(obj) in WRAPPER_TYPES:
            obj = obj.__wrapped__
        else:
            return obj


class FunctionRef:
    """A function named by module and qualified name, found again without our wrappers.

    Pickles as two strings; calling it calls the function.
    """

    __slots__ = ("_func", "module", "qualname")

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname
        self._func: Callable[..., Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (FunctionRef, (self.module, self.qualname))

    def __repr__(self) -> str:
        return f"FunctionRef({self.module!r}, {self.qualname!r})"

    def lookup(self, *, import_module: bool = True) -> Any:
        """The function this names, or raise LookupError/ImportError saying why not."""
        if import_module:
            __import__(self.module)
        module = sys.modules.get(self.module)
        if module is None:
            raise LookupError(f"module {self.module!r} is not imported")
        obj: Any = module
        for part in self.qualname.split("."):
            namespace = getattr(obj, "__dict__", None)
            if namespace is None or part not in namespace:
                raise LookupError(f"{self.module}.{self.qualname} does not exist")
            obj = unwrap(namespace[part])
        return obj

    def resolve(self) -> Callable[..., Any]:
        func = self._func
        if func is None:
            func = self._func = self.lookup()
        return func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


def _why_not_by_reference(func: Any) -> str:
    """Why a function that pickle refused cannot be found by name in another process."""
    qualname = getattr(func, "__qualname__", "")
    module = getattr(func, "__module__", None)
    if getattr(func, "__name__", "") == "<lambda>":
        return "it is a lambda; define it with def at module level"
    if "<locals>" in qualname:
        return (
            f"it is defined inside another function ({qualname}), so a worker process "
            "cannot import it; define it at module level"
        )
    if module == "__main__" and getattr(sys.modules.get("__main__"), "__file__", None) is None:
        return (
            "it is defined in __main__ of an interactive session, which a worker process "
            "cannot import; move it into a module"
        )
    if not module or not qualname:
        return "it has no module and qualified name to be imported by"
    return (
        f"a worker process would import it as {module}.{qualname}, but that name refers to "
        "something else (was it redefined, or wrapped by another decorator?)"
    )


def function_spec(func: Any) -> bytes:
    """The pickled form in which ``func`` is sent to a worker process.

    Plain pickle when it works (module-level functions, builtins, partials,
    callable objects); a :class:`FunctionRef` when the name refers to our
    wrapper. Raises :class:`UnpicklableError` naming the reason otherwise.
    """
    spec = _spec_or_reason(func)
    if isinstance(spec, bytes):
        return spec
    raise UnpicklableError(
        f"{display_name(func)} cannot run in a worker process: {spec}", what="function"
    )


def why_not_sendable(func: Any) -> str | None:
    """Why ``func`` cannot be sent to a worker process, or None when it can."""
    spec = _spec_or_reason(func)
    return None if isinstance(spec, bytes) else spec


def _spec_or_reason(func: Any) -> bytes | str:
    try:
        return pickle.dumps(func, PROTOCOL)
    except Exception as exc:
        error: Exception = exc
    if not isinstance(func, types.FunctionType):
        return describe_pickle_error(func, error)
    ref = _reference_past_wrapper(func)
    return pickle.dumps(ref, PROTOCOL) if ref is not None else _why_not_by_reference(func)


def _reference_past_wrapper(func: types.FunctionType) -> FunctionRef | None:
    """A reference that finds ``func`` by name through our wrapper, if there is one."""
    module, qualname = func.__module__, func.__qualname__
    if not module or "<locals>" in qualname or func.__name__ == "<lambda>":
        return None
    ref = FunctionRef(module, qualname)
    try:
        found = ref.lookup(import_module=False)
    except Exception:
        return None
    return ref if found is func else None


def portable(func: Any) -> Any:
    """``func``, or a :class:`FunctionRef` to it when plain pickle cannot send it by name.

    For executors that pickle (ProcessPoolExecutor, dask): a function decorated
    at module level is only reachable through our wrapper. Anything else is
    returned as is, for executors that do not pickle or pickle by value.
    """
    if not isinstance(func, types.FunctionType):
        return func
    try:
        pickle.dumps(func, PROTOCOL)
    except Exception:
        return _reference_past_wrapper(func) or func
    return func


def split_bound(wrapped: Any, instance: Any) -> tuple[Any, tuple[Any, ...]]:
    """A bound callable (as wrapt hands it to the wrapper) as (function, leading arguments).

    Methods cannot be pickled by name in a way that survives our wrapper, so
    the function goes by name and ``self``/``cls`` goes as the first argument.
    """
    if isinstance(wrapped, types.MethodType):
        return wrapped.__func__, (wrapped.__self__,)
    if isinstance(wrapped, wrapt.PartialCallableObjectProxy):
        # wrapt's shape for Class.method(instance, ...): the instance is `instance`
        return wrapped.__wrapped__, (instance,)
    return wrapped, ()


def describe_pickle_error(value: Any, error: BaseException) -> str:
    """A short reason why ``value`` cannot be pickled, with a hint for the usual suspects."""
    if isinstance(value, types.FunctionType):
        kind = f"cannot pickle {type(value).__name__!r} object"
        if value.__name__ == "<lambda>":
            return f"{kind} (a lambda?)"
        if "<locals>" in value.__qualname__:
            return f"{kind} (a function defined inside another function?)"
    return str(error) or type(error).__name__


def _pickles(value: Any) -> BaseException | None:
    try:
        pickle.dumps(value, PROTOCOL)
    except Exception as exc:
        return exc
    return None


def _named_arguments(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[str, Any]]:
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return [(f"#{i + 1}", a) for i, a in enumerate(args)] + list(kwargs.items())
    named: list[tuple[str, Any]] = []
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.extend(value.items())
        else:
            named.append((name, value))
    return named


def argument_error(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], error: BaseException
) -> UnpicklableError:
    """The error for arguments that failed to pickle, naming the first culprit."""
    name = display_name(func)
    for arg_name, value in _named_arguments(func, args, kwargs):
        failure = _pickles(value)
        if failure is not None:
            what = f"argument {arg_name!r}"
            return UnpicklableError(
                f"{what} of {name} cannot be sent to a worker process: "
                f"{describe_pickle_error(value, failure)}",
                what=what,
            )
    return UnpicklableError(
        f"the arguments of {name} cannot be sent to a worker process: {error}",
        what="arguments",
    )


def result_error(func_name: str, value: Any, error: BaseException) -> UnpicklableError:
    return UnpicklableError(
        f"the result of {func_name} cannot be sent back from the worker process: "
        f"{describe_pickle_error(value, error)}",
        what="result",
    )


def call_coroutine_function(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run an ``async def`` function to completion in a fresh event loop (for executors)."""
    return asyncio.run(func(*args, **kwargs))
