"""The ``loopwatch`` logger, and logging an internal failure once per kind.

loopwatch must never break the program it watches: when something inside it
fails, it says so once (with the traceback) and carries on with less.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("loopwatch")

#: One WARNING per block. Silent unless the application configures logging (or
#: the session's mode is "log"): a library must not print on its own.
block_logger = logging.getLogger("loopwatch.blocks")
block_logger.addHandler(logging.NullHandler())

_seen: set[str] = set()
_seen_lock = threading.Lock()


def log_once(key: str, message: str, *, exc_info: bool = True) -> bool:
    """Log ``message`` at WARNING the first time ``key`` is seen; True if it was logged."""
    with _seen_lock:
        if key in _seen:
            return False
        _seen.add(key)
    logger.warning(message, exc_info=exc_info)
    return True


def forget_owner(owner: object) -> None:
    """Forget the keys of one owner (``"... <id(owner)>"``): its id may be reused later."""
    suffix = f" {id(owner)}"
    with _seen_lock:
        for key in [k for k in _seen if k.endswith(suffix)]:
            _seen.discard(key)


def forget(key: str) -> None:
    """Allow ``key`` to be logged again (used by tests)."""
    with _seen_lock:
        _seen.discard(key)
