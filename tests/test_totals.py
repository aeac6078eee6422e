"""The time "blocked in total" comes from one model property, and every output agrees on it."""

from __future__ import annotations

import re

import pytest

from loopwatch._core.assemble import Cut
from loopwatch._core.findings import Found
from loopwatch._pytest import results as results_module
from loopwatch._pytest.results import Results
from loopwatch._pytest.windows import Seen
from loopwatch.config import Config
from loopwatch.console import render, render_summary
from loopwatch.model import Block, Frame, Report, SiteTable, blocked_total
from loopwatch.session import Session


def _block(number: int, duration: float, line: int = 3) -> Block:
    frame = Frame("app.py", line, "handler")
    return Block(
        id=number, loop="fed", started=float(number), duration=duration, cpu_ratio=1.0,
        kind="cpu", frames=(frame,), site=frame.location, function=frame.function,
    )


def _fed_session(max_blocks: int) -> Session:
    """A session given two blocks (one maybe dropped by max_blocks) and thousand cuts."""
    session = Session(Config(threshold=0.1, max_blocks=max_blocks), log_blocks=False)
    session.receive_block(Found(_block(1, 0.25), 1.0, 1.25))
    session.receive_block(Found(_block(2, 0.5, line=9), 2.0, 2.5))
    for _ in range(10):
        session.receive_cut(Cut(0.05, 1.0, "app.py:3", "handler", 0.0))
    return session


@pytest.mark.parametrize("max_blocks", [10, 1])
def test_summary_header_and_report_agree_and_leave_cuts_out(max_blocks: int) -> None:
    report = _fed_session(max_blocks).report()
    assert report.total_blocked == pytest.approx(0.75)  # blocks only, the dropped one too
    assert sum(site.total for site in report.sites) == pytest.approx(1.25)  # with the cuts
    plain, rich = render_summary(report), render(report, color=False).splitlines()[0]
    assert re.search(r"\b750(\.0)? ms blocked in total", plain), plain
    assert re.search(r"\b750(\.0)? ms blocked in total", rich), rich


def test_blocked_total_counts_only_blocks() -> None:
    table = SiteTable()
    table.add("a.py:1", "f", 0.3, cpu_ratio=1.0)
    table.add("a.py:1", "f", 0.02, cpu_ratio=1.0, block=False)
    table.add("b.py:2", "g", 0.2, cpu_ratio=0.0)
    sites = table.freeze()
    assert blocked_total(sites) == pytest.approx(0.5)
    assert [(s.site, s.blocks, round(s.block_total, 3)) for s in sites] == [
        ("a.py:1", 1, 0.3), ("b.py:2", 1, 0.2)
    ]


def test_a_report_saved_before_block_totals_falls_back_on_site_totals() -> None:
    data = Report(0.1, blocks=(_block(1, 0.25),)).to_dict()
    data["sites"] = [{"site": "app.py:3", "function": "handler", "count": 3, "total": 0.9,
                      "max": 0.4, "p95": 0.4, "cpu_ratio": 1.0, "kind": "cpu", "advice": ""}]
    assert Report.from_dict(data).total_blocked == pytest.approx(0.9)
    assert Report(0.1, blocks=(_block(1, 0.25),)).total_blocked == pytest.approx(0.25)


def test_plugin_results_count_every_block_and_merge_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sites and totals include blocks not kept in detail; a worker's export merges whole."""
    monkeypatch.setattr(results_module, "MAX_KEPT_BLOCKS", 2)
    worker = Results(0.1, "fail")
    kept = [s for s in (Seen(_block(n, 0.2), "call") for n in range(3)) if worker.count(s, "t::a")]
    worker.add_test("t::a", kept)
    worker.add_outside(Seen(_block(9, 0.4, line=5), "outside"))
    assert (worker.blocks, worker.dropped, len(kept)) == (4, 2, 2)
    assert worker.blocked_total == pytest.approx(1.0)
    assert worker.tests_at("app.py:3") == ["t::a"]

    controller = Results(0.1, "fail")
    controller.absorb(worker.export())
    # the worker's dropped blocks are counted, not in its lists: the sites hold what was sent
    assert controller.blocks == 4 and controller.tests_run == 1
    assert controller.blocked_total == pytest.approx(0.4)
    assert [s["tests"] for s in controller.export()["sites"]] == [["t::a"]]
