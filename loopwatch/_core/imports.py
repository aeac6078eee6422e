"""Run a callback the moment a module has been imported, while installed.

A meta path finder placed first on ``sys.meta_path``: for the module names it
watches it asks the other finders for the spec and wraps the loader, so that
the callback runs right after the module's code, before the importer gets it
back. ``import uvloop; uvloop.run(main())`` thus finds uvloop patched already.
Other imports pass through at the cost of one set look-up.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from loopwatch._log import log_once


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, then: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self._inner, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # The module's own loader in its spec again: reloads and tools that
        # read module.__loader__ see the real one.
        module.__spec__.loader = self._inner  # type: ignore[union-attr]
        module.__loader__ = self._inner
        self._inner.exec_module(module)
        try:
            self._then(module)
        except Exception:
            log_once("after-import", f"loopwatch failed to hook into {module.__name__}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` right after any of ``names`` is imported, while installed."""

    def __init__(self, names: Iterable[str], then: Callable[[ModuleType], None]) -> None:
        self._names = frozenset(names)
        self._then = then
        self._finding = threading.local()

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._names or getattr(self._finding, "busy", False):
            return None
        self._finding.busy = True  # the other finders may import; not through us again
        try:
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._finding.busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # a namespace package, or an old-style loader: leave it be
        spec.loader = _Loader(spec.loader, self._then)
        return spec
