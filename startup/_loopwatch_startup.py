"""Run by the ``loopwatch-subprocesses.pth`` startup hook when ``LOOPWATCH_CHILDREN`` is set.

Installed beside the ``.pth`` file, outside the loopwatch package: every Python
process started with that variable imports this module at start-up, so it
imports nothing of loopwatch's (not even the package) until the variable is
known to be meant for it. A variable set by mistake costs a JSON parse.
"""

from __future__ import annotations

import os


def start() -> None:
    raw = os.environ.get("LOOPWATCH_CHILDREN", "")
    if not raw.lstrip().startswith("{"):
        return  # not what loopwatch writes there: not even json (and re) get imported
    import json

    try:
        spec = json.loads(raw)
        wanted = (
            isinstance(spec, dict)
            and os.path.isdir(str(spec.get("dir")))
            and spec.get("parent") != os.getpid()
        )
    except ValueError:
        return
    if wanted:
        from loopwatch._children import start as watch_this_process

        watch_this_process()
