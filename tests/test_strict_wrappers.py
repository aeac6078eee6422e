"""Strict mode's wrappers (loopwatch._core.unaudited) look like what they wrap.

While a strict session runs, ``time.sleep``, ``os.stat``, socket methods,
``threading.Lock``... are wrappers. A program must not see the difference:
they pickle by reference (a ``ProcessPoolExecutor`` is handed ``time.sleep``),
and have the original's names, doc and signature. Every check runs over
whatever strict mode wraps, as its install code lists it: a wrapper added
later is checked without a change here.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import multiprocessing
import os
import pickle
import ssl  # noqa: F401  imported before the sessions: strict mode then wraps SSLSocket too
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch._core.strict import STRICT

HERE = os.path.abspath(__file__)
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
#: what the wrappers copy from the original (an original without one is not compared)
NAMES = ("__name__", "__qualname__", "__module__", "__doc__")

#: (where it is installed, its name there, the original)
Wrapped = tuple[Any, str, Any]


@contextmanager
def strict_session() -> Iterator[list[Wrapped]]:
    """A real strict session, and what strict mode wrapped for it."""
    with loopwatch.watch(threshold=0.5, strict=True):
        patches = [(p.owner, p.name, p.original) for p in STRICT._wrappers._patches]
        assert patches and all(getattr(owner, name) is not original
                               for owner, name, original in patches)
        yield patches


def where(owner: Any, name: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{name}"


def outcome(action: Callable[[], Any]) -> Any:
    """What ``action`` returned, or the kind of error it raised and its message."""
    try:
        return action()
    except Exception as error:
        return (type(error), str(error))


def round_trips(thing: Any, protocol: int) -> Any:
    return outcome(lambda: pickle.loads(pickle.dumps(thing, protocol)) is thing)


def signature(thing: Any) -> Any:
    """``inspect.signature``'s answer; for an error its kind only (the message names an
    object by its repr, which differs between a bound C method and a bound wrapper)."""
    try:
        return str(inspect.signature(thing))
    except (TypeError, ValueError) as error:
        return type(error)


def bound(owner: Any, name: str, attribute: Any) -> Any:
    """``attribute`` as a method of a (bare) instance of ``owner``."""
    return attribute.__get__(owner.__new__(owner), owner)


def describe_bound(method: Any) -> Any:
    """A bound method pickled and loaded: which method of which class (or the error)."""
    def load() -> Any:
        loaded = pickle.loads(pickle.dumps(method))
        return (loaded.__name__, type(loaded.__self__))

    return outcome(load)


@pytest.fixture(scope="module")
def start_methods() -> list[str | None]:
    """The default start method and spawn; multiprocessing's resource tracker started
    before any test counts descriptors (it keeps one for as long as this process lives)."""
    methods = multiprocessing.get_all_start_methods()
    if "spawn" in methods or "forkserver" in methods:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    if "forkserver" in methods:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return [None, *(["spawn"] if "spawn" in methods else [])]


def test_every_wrapper_pickles_by_reference_and_loads_as_the_original_afterwards() -> None:
    problems = []
    with strict_session() as patches:
        during = {
            where(owner, name): [round_trips(getattr(owner, name), p) for p in PROTOCOLS]
            for owner, name, _ in patches
        }
        pickled = {
            where(owner, name): [
                outcome(lambda owner=owner, name=name, p=p: pickle.dumps(getattr(owner, name), p))
                for p in PROTOCOLS
            ]
            for owner, name, _ in patches
        }
    for owner, name, original in patches:
        key = where(owner, name)
        if getattr(owner, name) is not original:
            problems.append(f"{key}: not given back")
        before = [round_trips(original, p) for p in PROTOCOLS]
        if during[key] != before:
            problems.append(f"{key}: round trip {during[key][-1]!r}, unwrapped {before[-1]!r}")
        after = [pickle.loads(data) is original for data in pickled[key] if type(data) is bytes]
        if len(after) != len(PROTOCOLS) or not all(after):
            problems.append(f"{key}: pickled while wrapped, loads as something else after")
    assert not problems, "\n".join(problems)


def test_every_wrapper_has_its_originals_names_doc_and_signature() -> None:
    problems = []
    with strict_session() as patches:
        for owner, name, original in patches:
            key, wrapper = where(owner, name), getattr(owner, name)
            for attribute in NAMES:
                if hasattr(original, attribute):
                    theirs, ours = getattr(original, attribute), getattr(wrapper, attribute, None)
                    if ours != theirs:
                        problems.append(f"{key}: {attribute} is {ours!r}, not {theirs!r}")
            if getattr(wrapper, "__wrapped__", None) is not original:
                problems.append(f"{key}: __wrapped__ is not the original")
            if signature(wrapper) != signature(original):
                problems.append(f"{key}: signature {signature(wrapper)} != {signature(original)}")
            if not (copy.copy(wrapper) is wrapper and copy.deepcopy(wrapper) is wrapper):
                problems.append(f"{key}: a copy is another object")
            if callable(original) != callable(wrapper):
                problems.append(f"{key}: callable or not, unlike the original")
    assert not problems, "\n".join(problems)


def test_methods_bind_and_pickle_bound_as_without_strict_mode() -> None:
    """A wrapped method is a method: unbound from the class, bound from an instance, with
    the original's bound signature; a bound one pickles exactly when the original's does."""
    problems = []
    with strict_session() as patches:
        methods = [(o, n, original) for o, n, original in patches if isinstance(o, type)]
        assert methods
        during = {}
        for owner, name, original in methods:
            key, wrapper = where(owner, name), getattr(owner, name)
            method = getattr(owner.__new__(owner), name)
            if not isinstance(method, types.MethodType) or method.__func__ is not wrapper:
                problems.append(f"{key}: not bound to an instance")
            if signature(method) != signature(bound(owner, name, original)):
                problems.append(f"{key}: bound signature {signature(method)}")
            during[key] = describe_bound(method)
    for owner, name, original in methods:
        key = where(owner, name)
        before = describe_bound(bound(owner, name, original))
        if during[key] != before:
            problems.append(f"{key}: bound method pickles as {during[key]!r}, not {before!r}")
    assert not problems, "\n".join(problems)


def test_locks_made_while_strict_refuse_pickling_and_copying_as_real_ones_do() -> None:
    problems = []
    with strict_session() as patches:
        factories = [(owner, name, original) for owner, name, original in patches
                     if isinstance(getattr(owner, name), type)]
        assert {name for _, name, _ in factories} >= {"Lock", "RLock"}
        actions: list[Callable[[Any], Any]] = [
            *[partial(pickle.dumps, protocol=p) for p in PROTOCOLS],
            lambda lock: pickle.dumps(lock.acquire),
            copy.copy,
            copy.deepcopy,
        ]
        for owner, name, original in factories:
            ours, real = getattr(owner, name)(), original()
            assert isinstance(ours, getattr(owner, name))
            for action in actions:
                theirs, got = outcome(partial(action, real)), outcome(partial(action, ours))
                if got != theirs:
                    problems.append(f"{where(owner, name)}(): {got!r}, not {theirs!r}")
    assert not problems, "\n".join(problems)


def test_wrapped_calls_are_still_found(tmp_path: Path) -> None:
    """The wrappers still report: a stat (a wrapper pickled by another name than its own)
    and a sleep, at their lines."""

    async def main() -> None:
        os.stat(tmp_path)  # wrapped: stat
        os.path.exists(tmp_path / "nothing")  # wrapped: exists
        time.sleep(0.001)  # wrapped: sleep
        await asyncio.sleep(0)

    with loopwatch.watch(threshold=0.5, strict=True) as session:
        asyncio.run(main())
    lines = Path(HERE).read_text().splitlines()

    def line_of(text: str) -> str:
        return f"{HERE}:{next(i for i, line in enumerate(lines, 1) if text in line)}"

    found = {(c.call, c.site) for c in session.report().calls}
    assert {
        ("os.stat", line_of("# wrapped: stat")),
        ("os.stat", line_of("# wrapped: exists")),
        ("time.sleep", line_of("# wrapped: sleep")),
    } <= found, found


@pytest.mark.parametrize("method", [None, "spawn"], ids=["default", "spawn"])
def test_a_process_pool_runs_wrapped_functions(
    method: str | None, start_methods: list[str | None], tmp_path: Path
) -> None:
    """time.sleep and os.stat handed to a ProcessPoolExecutor, from a loop and not."""
    if method not in start_methods:
        pytest.skip(f"no {method} start method here")
    path = tmp_path / "file"
    path.write_bytes(b"12345")
    context = multiprocessing.get_context(method)

    with strict_session(), ProcessPoolExecutor(1, mp_context=context) as pool:

        async def main() -> os.stat_result:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool, time.sleep, 0.001)
            return await loop.run_in_executor(pool, os.stat, path)

        assert asyncio.run(main()).st_size == 5
        assert pool.submit(time.sleep, 0).result(timeout=60) is None
        assert pool.submit(os.stat, path).result(timeout=60).st_size == 5
        assert pool.submit(os.lstat, path).result(timeout=60).st_size == 5
    gc.collect()  # the pool's pipes, in reference cycles (as without loopwatch)
