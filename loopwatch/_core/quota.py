"""How long this process's cgroup has been throttled for its CPU quota (Linux, where told).

A container with a CPU limit (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in
v1) is not run at all once it has used its quota for the period: its threads
sit runnable, which the run-queue delay already shows; this says why.
"""

from __future__ import annotations

import os


def _cpu_stat_path() -> tuple[str, str, float] | None:
    """(path of cpu.stat, the throttled field, seconds per unit), or None where there is none."""
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    for entry in entries:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if controllers == "":  # cgroup v2
            candidate = os.path.join("/sys/fs/cgroup", path.lstrip("/"), "cpu.stat")
            if os.path.exists(candidate):
                return candidate, "throttled_usec", 1e-6
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                candidate = os.path.join("/sys/fs/cgroup", mount, path.lstrip("/"), "cpu.stat")
                if os.path.exists(candidate):
                    return candidate, "throttled_time", 1e-9
    return None


class Throttling:
    """Reads the cgroup's throttled time; ``seconds()`` is None where the OS does not say."""

    def __init__(self) -> None:
        self._where = _cpu_stat_path()

    def seconds(self) -> float | None:
        """Seconds the cgroup has been throttled so far (a counter: compare two readings)."""
        if self._where is None:
            return None
        path, field, unit = self._where
        try:
            with open(path, "rb") as stat:
                for line in stat.read().decode("ascii", "replace").splitlines():
                    name, _, value = line.partition(" ")
                    if name == field:
                        return int(value) * unit
        except (OSError, ValueError):
            self._where = None
        return None
