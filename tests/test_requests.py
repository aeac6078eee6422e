"""Naming the request a block ran for: a label of the program's own, and the cap on labels."""

from __future__ import annotations

import asyncio
import time

import pytest

import loopwatch
from loopwatch import requests as requests_module


def test_a_label_set_with_request_names_the_block() -> None:
    async def consume() -> None:
        with loopwatch.request("kafka orders partition=3"):
            time.sleep(0.12)  # blocks
        await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(consume(), asyncio.sleep(0.01))

    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(main())
    (block,) = session.report().blocks
    assert block.request == "kafka orders partition=3"
    assert session.report().sites[0].requests == ("kafka orders partition=3",)


def test_outside_request_a_block_names_none() -> None:
    async def main() -> None:
        with loopwatch.request("job"):
            await asyncio.sleep(0)
        time.sleep(0.12)  # blocks, after the request's end

    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(main())
    assert [b.request for b in session.report().blocks] == [None]


def test_request_wants_a_string() -> None:
    with pytest.raises(TypeError, match="non-empty string"), loopwatch.request(""):
        pass


def test_labels_past_the_cap_fold_into_one_per_method(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = requests_module._Cap(2)
    assert [cap(f"GET /items/{n}", "GET") for n in range(4)] == [
        "GET /items/0", "GET /items/1", "GET <other paths>", "GET <other paths>",
    ]
    assert cap("GET /items/0", "GET") == "GET /items/0"  # already known: kept
