"""Exports: speedscope JSON (checked against speedscope's file format) and collapsed stacks."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch.export import (
    SPEEDSCOPE_SCHEMA,
    to_collapsed,
    to_speedscope,
    write_collapsed,
    write_speedscope,
)
from loopwatch.model import Block, Frame, Report, Stack

SCHEMA_FILE = Path(__file__).parent / "data" / "speedscope-file-format.schema.json"
COLLAPSED_LINE = re.compile(r"^(?P<stack>[^ ].*) (?P<weight>\d+)$")


def sleepy_parse() -> None:
    time.sleep(0.08)


def sleepy_fetch() -> None:
    time.sleep(0.08)


async def two_blocks() -> None:
    await asyncio.sleep(0)
    sleepy_parse()
    await asyncio.sleep(0)
    sleepy_fetch()
    await asyncio.sleep(0)


@pytest.fixture(scope="module")
def report() -> Report:
    """A real report: two 80 ms blocks at a 50 ms threshold, in two functions."""
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(two_blocks())
    result = session.report()
    assert len(result.blocks) == 2, result
    return result


def validate(document: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a dev dependency")
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))


def test_speedscope_matches_the_file_format(report: Report) -> None:
    """The speedscope export validates against speedscope's file format schema."""
    document = to_speedscope(report)
    validate(document)
    assert document["$schema"] == SPEEDSCOPE_SCHEMA
    # a JSON round trip changes nothing: only plain types
    assert json.loads(json.dumps(document)) == document


def test_speedscope_schema_rejects_broken_documents(report: Report) -> None:
    """The schema in tests/data is strict enough to catch a malformed profile."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a dev dependency")
    document = to_speedscope(report)
    del document["profiles"][0]["weights"]
    with pytest.raises(jsonschema.ValidationError):
        validate(document)
    document = to_speedscope(report)
    document["profiles"][0]["samples"][0][0] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_speedscope_has_one_profile_per_block_weighted_by_its_duration(report: Report) -> None:
    """Each block is a sampled profile in ms; its stacks are outermost first, weights sum up."""
    document = to_speedscope(report)
    frames = document["shared"]["frames"]
    profiles = document["profiles"]
    assert len(profiles) == len(report.blocks)
    for profile, block in zip(profiles, sorted(report.blocks, key=lambda b: b.id), strict=True):
        assert profile["type"] == "sampled"
        assert profile["unit"] == "milliseconds"
        assert profile["endValue"] == pytest.approx(block.duration * 1000)
        assert sum(profile["weights"]) == pytest.approx(block.duration * 1000)
        assert len(profile["samples"]) == len(profile["weights"]) == len(block.stacks)
        assert block.function is not None and block.function in profile["name"]
        innermost_names = {frames[sample[-1]]["name"] for sample in profile["samples"]}
        assert block.function in innermost_names
        outermost = frames[profile["samples"][0][0]]
        assert outermost["name"] != block.function  # the root comes first
        main_stack = max(block.stacks, key=lambda s: s.count)
        assert [frames[i]["name"] for i in profile["samples"][
            block.stacks.index(main_stack)]] == [f.function for f in main_stack.frames]


def test_speedscope_shares_frames_between_blocks(report: Report) -> None:
    """A frame seen in several blocks is stored once, with its file and line."""
    frames = to_speedscope(report)["shared"]["frames"]
    keys = [(f["name"], f["file"], f.get("line")) for f in frames]
    assert len(keys) == len(set(keys))
    sleepers = [f for f in frames if f["name"] in ("sleepy_parse", "sleepy_fetch")]
    assert {f["name"] for f in sleepers} == {"sleepy_parse", "sleepy_fetch"}
    for frame in sleepers:
        assert frame["file"] == __file__
        assert isinstance(frame["line"], int) and frame["line"] > 0


def test_collapsed_lines_are_folded_stacks(report: Report) -> None:
    """Collapsed output is 'outer;...;inner weight', weights in microseconds of blocked time."""
    text = to_collapsed(report)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines
    total = 0
    innermost = set()
    for line in lines:
        match = COLLAPSED_LINE.match(line)
        assert match, line
        frames = match["stack"].split(";")
        assert len(frames) > 1
        innermost.add(frames[-1].split(" ")[0])
        total += int(match["weight"])
    assert {"sleepy_parse", "sleepy_fetch"} <= innermost
    blocked = sum(b.duration for b in report.blocks) * 1e6
    assert total == pytest.approx(blocked, abs=len(lines))


def test_collapsed_by_samples_counts_samples(report: Report) -> None:
    """weight='samples' gives the raw sample counts."""
    lines = to_collapsed(report, weight="samples").splitlines()
    total = sum(int(COLLAPSED_LINE.match(line)["weight"]) for line in lines)  # type: ignore[index]
    assert total == sum(s.count for b in report.blocks for s in b.stacks)
    with pytest.raises(ValueError, match="weight must be"):
        to_collapsed(report, weight="bytes")  # type: ignore[arg-type]


def test_blocks_without_stacks_still_count() -> None:
    """A block whose stack could not be taken shows as '<no stack captured>', not nothing."""
    block = Block(id=1, loop="l", started=0.0, duration=0.3, cpu_ratio=None, kind="unknown",
                  frames=(), site=None, function=None, source="none")
    report = Report(threshold=0.1, blocks=(block,))
    document = to_speedscope(report)
    validate(document)
    assert document["shared"]["frames"][0]["name"] == "<no stack captured>"
    assert document["profiles"][0]["weights"] == [300.0]
    assert to_collapsed(report) == "<no stack captured> (<unknown>) 300000\n"


def test_names_with_separators_do_not_break_folded_lines() -> None:
    """A ';' in a frame name cannot split a folded stack."""
    frames = (Frame("<string>", 1, "odd;name"), Frame("app.py", 2, "f"))
    block = Block(id=1, loop="l", started=0.0, duration=0.1, cpu_ratio=1.0, kind="cpu",
                  frames=frames, site="app.py:2", function="f", samples=2,
                  stacks=(Stack(frames, 2),))
    (line,) = to_collapsed(Report(threshold=0.05, blocks=(block,))).splitlines()
    assert line == "odd:name (<string>:1);f (app.py:2) 100000"


def test_write_functions_write_files(report: Report, tmp_path: Path) -> None:
    """write_speedscope and write_collapsed write what to_* return."""
    write_speedscope(report, tmp_path / "out.speedscope.json")
    write_collapsed(report, tmp_path / "out.folded")
    assert json.loads((tmp_path / "out.speedscope.json").read_text()) == to_speedscope(report)
    assert (tmp_path / "out.folded").read_text() == to_collapsed(report)


FAILING_SCRIPT = """
import asyncio, time

async def main():
    await asyncio.sleep(0)
    time.sleep(0.08)
    raise ValueError("boom")

asyncio.run(main())
"""


def loopwatch_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loopwatch", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_run_writes_exports_even_when_the_script_fails(tmp_path: Path) -> None:
    """run --speedscope/--collapsed write their files although the script raised."""
    (tmp_path / "app.py").write_text(textwrap.dedent(FAILING_SCRIPT))
    result = loopwatch_cli("run", "--threshold", "0.05", "--json", "out.json",
                           "--speedscope", "out.speedscope.json", "--collapsed", "out.folded",
                           "app.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "ValueError: boom" in result.stderr
    document = json.loads((tmp_path / "out.speedscope.json").read_text())
    validate(document)
    assert len(document["profiles"]) == 1
    folded = (tmp_path / "out.folded").read_text()
    assert re.search(r";main \(app\.py:6\) \d+$", folded, re.M), folded


def test_cli_report_exports_a_saved_report(tmp_path: Path, report: Report) -> None:
    """report OUT.json --speedscope/--collapsed exports a saved report as run would have."""
    report.save(tmp_path / "saved.json")
    result = loopwatch_cli("report", "saved.json", "--speedscope", "s.json",
                           "--collapsed", "c.folded", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 blocks over 50.0 ms" in result.stdout
    written = json.loads((tmp_path / "s.json").read_text())
    expected = to_speedscope(Report.load(tmp_path / "saved.json"))
    assert written["shared"] == expected["shared"]
    for profile in (*written["profiles"], *expected["profiles"]):
        del profile["name"]  # names show paths relative to the working folder
    assert written["profiles"] == expected["profiles"]
    # labels use paths relative to the working folder: compare the weights
    weights = [line.rsplit(" ", 1)[1] for line in to_collapsed(report).splitlines()]
    written = (tmp_path / "c.folded").read_text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in written] == weights


def test_cli_refuses_an_export_path_in_a_missing_folder(tmp_path: Path, report: Report) -> None:
    """An export into a folder that does not exist is a usage error, found before running."""
    report.save(tmp_path / "saved.json")
    result = loopwatch_cli("report", "saved.json", "--collapsed", "nowhere/c.folded",
                           cwd=tmp_path)
    assert result.returncode == 2
    assert "folder" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
