"""The decorator's surface: what it accepts, what it refuses, what it keeps."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from concurrent.futures import ThreadPoolExecutor

import offload_workload as w
import pytest

from loopwatch.offload import OffloadDecorator, offload

# Not `import loopwatch.offload`: once loopwatch re-exports the decorator,
# the attribute loopwatch.offload is the function, not this package.
package = importlib.import_module("loopwatch.offload")


def test_all_matches_the_real_exports() -> None:
    """__all__ lists exactly the public names the package exposes."""
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("loopwatch.offload")
    }
    assert set(package.__all__) == public


def test_name_doc_signature_and_module_are_kept() -> None:
    """The wrapper looks like the function it wraps."""
    raw = w.square.__wrapped__
    assert w.square.__name__ == "square"
    assert w.square.__qualname__ == "square"
    assert w.square.__module__ == "offload_workload"
    assert w.square.__doc__ == "Square x in a worker process."
    assert inspect.signature(w.square) == inspect.signature(raw)
    assert str(inspect.signature(w.Counter.plus)) == "(self, n: 'int') -> 'int'"
    assert str(inspect.signature(w.Counter(1).plus)) == "(n: 'int') -> 'int'"


def test_wrapper_is_seen_as_a_coroutine_function() -> None:
    """Frameworks that dispatch on iscoroutinefunction see that calling it gives a coroutine."""
    assert inspect.iscoroutinefunction(w.async_where)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(w.square)
    else:
        assert asyncio.iscoroutinefunction(w.square)


def test_bare_and_called_forms() -> None:
    """@offload, @offload() and offload(f) all give "auto"; offload("thread") gives a decorator."""

    def f() -> int:
        return 1

    assert isinstance(offload(), OffloadDecorator)
    assert isinstance(offload("thread"), OffloadDecorator)
    assert repr(offload("process", max_workers=2)) == (
        "<loopwatch offload('process', max_workers=2) decorator>"
    )
    assert asyncio.run(offload(f)()) == 1
    assert asyncio.run(offload()(f)()) == 1


def test_misspelt_target_names_the_value_and_the_choices() -> None:
    """offload("proces") says what was given, what is allowed, and the likely fix."""
    with pytest.raises(ValueError) as info:
        offload("proces")  # type: ignore[call-overload]
    message = str(info.value)
    assert "'proces'" in message
    assert '"auto", "thread", "process"' in message
    assert 'did you mean "process"?' in message


@pytest.mark.parametrize("target", [42, None, 1.5])
def test_target_of_the_wrong_type(target: object) -> None:
    """A target that is neither a string nor an executor is a TypeError naming its type."""
    with pytest.raises(TypeError, match=f"not {type(target).__name__}"):
        offload(target)  # type: ignore[call-overload]


def test_executor_class_instead_of_instance() -> None:
    """Passing the executor class, not an instance, says so."""
    with pytest.raises(TypeError, match=r"offload\(ThreadPoolExecutor\(\)\)"):
        offload(ThreadPoolExecutor)  # type: ignore[call-overload]


def test_wrapping_something_not_callable() -> None:
    """Decorating something that is not callable is a TypeError naming it."""
    with pytest.raises(TypeError, match="can only wrap a function or method, not int 42"):
        offload("thread")(42)  # type: ignore[call-overload]


def test_generator_functions_are_refused() -> None:
    """A generator function would run on the loop as it is iterated: refused up front."""

    def numbers():  # type: ignore[no-untyped-def]
        yield 1

    async def anumbers():  # type: ignore[no-untyped-def]
        yield 1

    for func in (numbers, anumbers):
        with pytest.raises(TypeError, match="generator function"):
            offload("thread")(func)


def test_offloading_twice_is_refused() -> None:
    """Stacking two offload decorators is a mistake, said clearly."""
    with pytest.raises(TypeError, match=r"square\(\) is already offloaded"):
        offload("thread")(w.square)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_workers": 0}, "max_workers must be a positive integer or None, not 0"),
        ({"max_workers": "2"}, "max_workers must be a positive integer or None, not '2'"),
        ({"max_workers": True}, "max_workers must be a positive integer"),
        ({"mp_context": "sporn"}, "mp_context 'sporn' is not a start method here"),
    ],
)
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    """Bad option values fail at decoration time, naming the option and the value."""
    with pytest.raises(ValueError, match=match):
        offload("process", **kwargs)  # type: ignore[arg-type]


def test_options_that_do_not_apply_to_the_target() -> None:
    """max_workers with an executor, mp_context with threads: refused, saying why."""
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="size your executor"):
        offload(executor, max_workers=2)
    with pytest.raises(ValueError, match="mp_context is for the 'process' and 'auto'"):
        offload("thread", mp_context="spawn")
    with pytest.raises(TypeError, match="mp_context must be a start method name"):
        offload("process", mp_context=3)  # type: ignore[arg-type]


def test_calling_without_a_running_loop_is_an_ordinary_coroutine() -> None:
    """Calling the wrapper only makes a coroutine: nothing runs until it is awaited."""
    coro = offload("thread")(w.add)(1, 2)
    assert inspect.iscoroutine(coro)
    assert asyncio.run(coro) == 3
