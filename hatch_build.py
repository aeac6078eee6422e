"""Ship the startup hook that watches worker processes (see loopwatch/_children.py).

A ``.pth`` file in site-packages runs at every interpreter start-up; this one
does nothing unless ``LOOPWATCH_CHILDREN`` is set, and then imports
``_loopwatch_startup`` (also at the top of site-packages). Editable installs
need them too, hence a hook rather than a force-include of the wheel only.
"""

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: installed at the top of site-packages: the hook, and the module it runs
FILES = ("loopwatch-subprocesses.pth", "_loopwatch_startup.py")


class StartupHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        key = "force_include_editable" if version == "editable" else "force_include"
        for name in FILES:
            build_data.setdefault(key, {})[f"startup/{name}"] = name
