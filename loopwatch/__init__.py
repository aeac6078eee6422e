"""loopwatch: find what blocks your asyncio event loop, and move it off the loop.

>>> import asyncio, time, loopwatch
>>> async def main():
...     time.sleep(0.2)
>>> with loopwatch.watch(threshold=0.1) as session:
...     asyncio.run(main())
>>> len(session.report().blocks)
1

The public names are loaded on first use, so that importing loopwatch (as
pytest does for every run, to find the plugin) costs next to nothing.
"""

import sys as _sys
from importlib import import_module as _import_module
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopwatch.config import Config, ConfigError
    from loopwatch.errors import LoopBlockedError
    from loopwatch.model import Block, BlockingCall, Frame, LoopStats, Report, Site
    from loopwatch.offload import offload
    from loopwatch.requests import request
    from loopwatch.session import Session, run, watch
    from loopwatch.sinks import Sink

_HOMES = {
    "Block": "loopwatch.model",
    "BlockingCall": "loopwatch.model",
    "Config": "loopwatch.config",
    "ConfigError": "loopwatch.config",
    "Frame": "loopwatch.model",
    "LoopBlockedError": "loopwatch.errors",
    "LoopStats": "loopwatch.model",
    "Report": "loopwatch.model",
    "Session": "loopwatch.session",
    "Site": "loopwatch.model",
    "Sink": "loopwatch.sinks",
    "request": "loopwatch.requests",
    "run": "loopwatch.session",
    "watch": "loopwatch.session",
}

__all__ = [
    "Block",
    "BlockingCall",
    "Config",
    "ConfigError",
    "Frame",
    "LoopBlockedError",
    "LoopStats",
    "Report",
    "Session",
    "Sink",
    "Site",
    "__version__",
    "offload",
    "request",
    "run",
    "watch",
]


class _Package(_ModuleType):
    """The loopwatch module: ``loopwatch.offload`` is the decorator, always.

    ``loopwatch.offload`` is also the name of the subpackage that implements
    it, and importing a subpackage sets the parent's attribute to the module.
    This property takes that assignment and keeps answering with the decorator.
    """

    @property
    def offload(self) -> Any:
        from loopwatch.offload import offload as decorator

        return decorator

    @offload.setter
    def offload(self, module: Any) -> None:
        pass  # the import system announcing the subpackage: it stays in sys.modules


_sys.modules[__name__].__class__ = _Package


def _installed_version() -> str:
    # importlib.metadata takes tens of milliseconds to import: only when asked
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loopwatch")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = globals()["__version__"] = _installed_version()
        return value
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'loopwatch' has no attribute {name!r}")
    value = getattr(_import_module(home), name)
    globals()[name] = value  # next time, no look-up
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
