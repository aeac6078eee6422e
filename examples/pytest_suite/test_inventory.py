"""Tests for inventory.py, to see what ``pytest --loopwatch`` says about them.

    pip install pytest pytest-asyncio      # and loopwatch: pip install . from its checkout
    python -m pytest examples/pytest_suite --loopwatch                        # blocks fail
    python -m pytest examples/pytest_suite --loopwatch --loopwatch-mode=warn  # blocks warn

``test_stock_level`` passes. ``test_reserve`` blocks the loop in
``inventory.py`` and fails with that line; ``test_restock_after_reserve``
blocks in its fixture, and the failure names the fixture.
``test_reserve_blocks_known_issue`` blocks on purpose (``allow=True``) and
asserts on what loopwatch saw. Without ``--loopwatch`` they all pass.
"""

from __future__ import annotations

import asyncio

import inventory  # inventory.py, next to this file
import pytest
import pytest_asyncio

from loopwatch.pytest_plugin import LoopwatchBlocks


@pytest.mark.asyncio
async def test_stock_level() -> None:
    assert await inventory.stock_level("sku-1") >= 0


@pytest.mark.asyncio
async def test_reserve() -> None:
    assert await inventory.reserve("sku-1", 1)


@pytest_asyncio.fixture
async def reserved_item() -> str:
    # Setting up through the blocking call blocks in the fixture: loopwatch says so.
    assert await inventory.reserve("sku-1", 1)
    return "sku-1"


@pytest.mark.asyncio
async def test_restock_after_reserve(reserved_item: str) -> None:
    assert await inventory.stock_level(reserved_item) >= 0


@pytest.mark.loopwatch(allow=True)  # a known issue: record the block, don't fail
@pytest.mark.asyncio
async def test_reserve_blocks_known_issue(loopwatch: LoopwatchBlocks) -> None:
    await inventory.reserve("sku-2", 1)
    await asyncio.sleep(0)  # a block is known once its loop iteration has ended
    assert [block.function for block in loopwatch.blocks] == ["_legacy_reserve"]
    assert loopwatch.blocks[0].kind == "wait"
