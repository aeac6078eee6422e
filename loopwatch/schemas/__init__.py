"""JSON Schemas (draft 2020-12) of every JSON file loopwatch writes.

* ``report.schema.json``: a report (``Report.to_dict()``, ``loopwatch run --json``);
* ``pytest-report.schema.json``: the pytest plugin's ``--loopwatch-json`` file;
* ``baseline.schema.json``: a pytest baseline (``--loopwatch-baseline``).

They refer to each other by file name (``report.schema.json#/$defs/block``):
give a validator all three.

>>> sorted(NAMES)
['baseline', 'pytest-report', 'report']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
NAMES = ("report", "pytest-report", "baseline")


def path(name: str) -> Path:
    """The file of one schema: ``path("report")``."""
    if name not in NAMES:
        raise ValueError(f"no loopwatch schema {name!r}; known: {', '.join(NAMES)}")
    return HERE / f"{name}.schema.json"


def load(name: str) -> dict[str, Any]:
    """One schema, parsed."""
    schema: dict[str, Any] = json.loads(path(name).read_text(encoding="utf-8"))
    return schema
