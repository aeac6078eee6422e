"""The JSON Schemas shipped in loopwatch/schemas: valid, complete, and strict enough to fail."""

from __future__ import annotations

import jsonschema
import pytest
import schemas as checked

from loopwatch import Report, schemas
from loopwatch.model import Block, Frame, LoopStats


@pytest.mark.parametrize("name", schemas.NAMES)
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas.load(name))
    assert schemas.path(name).name == f"{name}.schema.json"


def test_an_unknown_schema_is_named() -> None:
    with pytest.raises(ValueError, match="no loopwatch schema 'nope'; known: report"):
        schemas.path("nope")


def sample_report() -> Report:
    frame = Frame("/srv/app.py", 7, "handler")
    block = Block(id=1, loop="Loop#1 (MainThread)", started=1.0e9, duration=0.2, cpu_ratio=0.01,
                  kind="wait", frames=(frame,), site=frame.location, function="handler",
                  request="GET /report", pid=42)
    loop = LoopStats(loop="Loop#1 (MainThread)", iterations=None, busy=0.2, watched=2.0,
                     blocks=1, timeline=((1.0e9, 0.2, 0.15), (1.0e9 + 1, 0.0, None)))
    return Report(threshold=0.1, blocks=(block,), loops=(loop,))


def test_a_report_passes_and_a_broken_one_fails_naming_the_field() -> None:
    data = sample_report().to_dict()
    checked.check("report", data)
    data["blocks"][0]["kind"] = "slow"
    data["loops"][0]["timeline"][0] = [1.0e9, 2.0]
    data["surprise"] = True
    with pytest.raises(AssertionError) as failed:
        checked.check("report", data)
    message = str(failed.value)
    assert "blocks/0/kind: 'slow' is not one of" in message
    assert "loops/0/timeline/0" in message
    assert "'surprise' was unexpected" in message
