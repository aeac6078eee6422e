"""Every JSON file loopwatch writes, read back through its schema (loopwatch/schemas)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012

from loopwatch import schemas


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    registry = referencing.Registry().with_resources(
        (f"loopwatch/{n}.schema.json", DRAFT202012.create_resource(schemas.load(n)))
        for n in schemas.NAMES
    )
    return jsonschema.Draft202012Validator(schemas.load(name), registry=registry)


def check(name: str, data: Any) -> Any:
    """``data``, after checking it against schema ``name`` (every error listed)."""
    written = json.loads(json.dumps(data))  # as a file has it: tuples are arrays
    errors = sorted(validator(name).iter_errors(written), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:10]
    )
    return data


def read(path: Path, name: str = "report") -> Any:
    """A JSON file loopwatch wrote, checked against its schema."""
    return check(name, json.loads(Path(path).read_text(encoding="utf-8")))
