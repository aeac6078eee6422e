"""loopwatch: find what blocks your asyncio event loop, and move it off the loop.

>>> import asyncio, time, loopwatch
>>> async def main():
...     time.sleep(0.2)
>>> with loopwatch.watch(threshold=0.1) as session:
...     asyncio.run(main())
>>> len(session.report().blocks)
1
"""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

from loopwatch.config import Config, ConfigError
from loopwatch.errors import LoopBlockedError
from loopwatch.model import Block, Frame, LoopStats, Report, Site
from loopwatch.session import Session, run, watch

try:
    __version__ = _version("loopwatch")
except _NotInstalled:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Block",
    "Config",
    "ConfigError",
    "Frame",
    "LoopBlockedError",
    "LoopStats",
    "Report",
    "Session",
    "Site",
    "__version__",
    "run",
    "watch",
]
