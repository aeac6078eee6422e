"""How durations and file names are written for a person: one place, so every output agrees."""

from __future__ import annotations

import os
import sysconfig


def milliseconds(seconds: float, decimals: int = 0) -> str:
    """``1,234 ms``-style, with ``decimals`` digits after the point.

    >>> milliseconds(0.15), milliseconds(0.0123, 1)
    ('150 ms', '12.3 ms')
    """
    return f"{seconds * 1000:,.{decimals}f} ms"


def duration(seconds: float) -> str:
    """Milliseconds below a second, then seconds: short enough for a table cell."""
    if seconds >= 10:
        return f"{seconds:,.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return milliseconds(seconds, 0 if seconds >= 0.1 else 1)


def short_path(path: str, root: str | None = None) -> str:
    """A file name as a person wants to read it: relative to ``root`` (default: here),
    or to site-packages, or to the standard library."""
    if path.startswith("<"):
        return path
    try:
        relative = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        relative = path
    if not relative.startswith(".." + os.sep):
        return relative
    for marker in ("site-packages", "dist-packages"):
        index = path.find(os.sep + marker + os.sep)
        if index >= 0:
            return path[index + len(marker) + 2:]
    lib = sysconfig.get_paths().get("stdlib", "")
    if lib and path.startswith(lib + os.sep):
        return path[len(lib) + 1:]
    return path


def short_site(site: str | None) -> str:
    if not site:
        return "<no stack captured>"
    path, _, line = site.rpartition(":")
    return f"{short_path(path)}:{line}" if path else site
