"""Offload tests: make the workload module importable here and in worker processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from multiprocessing import resource_tracker

import pytest

# Worker processes are spawned with the parent's sys.path, so this also lets
# them import offload_workload, whatever pytest's import mode.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# Spawning the first worker starts multiprocessing's resource tracker, a helper
# process (and a pipe to it) that lives as long as this process, whoever
# spawned it. Start it before any test counts descriptors.
if sys.platform != "win32":
    resource_tracker.ensure_running()


@pytest.fixture(autouse=True)
def _shut_down_offload_pools() -> Iterator[None]:
    """No pool outlives a test: its workers, threads and descriptors are gone after it."""
    yield
    from loopwatch.offload import shutdown

    shutdown()
